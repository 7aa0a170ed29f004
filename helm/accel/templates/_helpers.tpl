{{/* Names ------------------------------------------------------------------------------------- */}}
{{- define "accel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "accel.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "accel.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "accel.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "accel.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "accel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "accel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "accel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "accel.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "accel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "accel.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Whether a predictor container shares the pod with Accel (Accel is then a sidecar). */}}
{{- define "accel.hasPredictor" -}}
{{- if eq .Values.mode "deployment" -}}
{{- if .Values.predictor.enabled -}}true{{- end -}}
{{- else if .Values.servingRuntime.predictor.enabled -}}true{{- end -}}
{{- end -}}

{{/* Where gRPC listens: the Unix socket when unixSocket.enabled, else accel.grpcAddress. */}}
{{- define "accel.grpcAddress" -}}
{{- if .Values.unixSocket.enabled -}}
{{- printf "unix:%s/grpc.sock" (trimSuffix "/" .Values.unixSocket.dir) -}}
{{- else if eq (toString .Values.accel.grpcAddress) "auto" -}}
{{- if include "accel.hasPredictor" . -}}127.0.0.1{{- else -}}0.0.0.0{{- end -}}
{{- else -}}
{{- .Values.accel.grpcAddress -}}
{{- end -}}
{{- end -}}

{{/* Whether REST (and with it /v2/health/*) is on the Unix socket instead of TCP. */}}
{{- define "accel.httpOnSocket" -}}
{{- if and .Values.unixSocket.enabled .Values.unixSocket.http -}}true{{- end -}}
{{- end -}}

{{/* What the predictor container dials (ACCEL_GRPC_URL, ACCEL_HTTP_URL). */}}
{{- define "accel.grpcUrl" -}}
{{- if .Values.unixSocket.enabled -}}
{{- printf "unix://%s/grpc.sock" (trimSuffix "/" .Values.unixSocket.dir) -}}
{{- else -}}
{{- printf "localhost:%v" .Values.accel.grpcPort -}}
{{- end -}}
{{- end -}}

{{- define "accel.httpUrl" -}}
{{- if include "accel.httpOnSocket" . -}}
{{- printf "unix://%s/http.sock" (trimSuffix "/" .Values.unixSocket.dir) -}}
{{- else -}}
{{- printf "http://localhost:%v" .Values.accel.httpPort -}}
{{- end -}}
{{- end -}}

{{/* Fails the render for colocation settings that would leave Accel unreachable. */}}
{{- define "accel.checkColocation" -}}
{{- if and .Values.unixSocket.enabled (not (include "accel.hasPredictor" .)) -}}
{{- fail "unixSocket.enabled moves gRPC onto a Unix socket only a container in the pod can reach: it needs a predictor container (predictor.enabled, or servingRuntime.predictor.enabled)" -}}
{{- end -}}
{{- if and (include "accel.httpOnSocket" .) (eq (toString .Values.accel.allowMetrics) "false") -}}
{{- fail "unixSocket.http takes REST off TCP, so the probes use the metrics port: it cannot be combined with accel.allowMetrics=false" -}}
{{- end -}}
{{- end -}}

{{/* Accel's flags as ACCEL_* variables: every key of .Values.accel, camelCase -> UPPER_SNAKE; empty
     lists and strings are left out (the flag's default applies). */}}
{{- define "accel.env" -}}
- name: ACCEL_MODEL_REPOSITORY
  value: {{ .Values.modelRepository.mountPath | quote }}
{{- range $key, $value := .Values.accel }}
{{- /* A listener on the Unix socket is set after the loop. */}}
{{- if and (eq $key "grpcAddress") $.Values.unixSocket.enabled }}
{{- else if and (eq $key "httpAddress") (include "accel.httpOnSocket" $) }}
{{- else if not (and (or (kindIs "slice" $value) (kindIs "string" $value)) (empty $value)) }}
- name: {{ printf "ACCEL_%s" ($key | snakecase | upper) }}
  {{- if eq $key "grpcAddress" }}
  value: {{ include "accel.grpcAddress" $ | quote }}
  {{- else if kindIs "slice" $value }}
  value: {{ join "," $value | quote }}
  {{- else if kindIs "float64" $value }}
  value: {{ int64 $value | toString | quote }}
  {{- else }}
  value: {{ toString $value | quote }}
  {{- end }}
{{- end }}
{{- end }}
{{- if .Values.unixSocket.enabled }}
- name: ACCEL_GRPC_ADDRESS
  value: {{ include "accel.grpcAddress" . | quote }}
{{- if include "accel.httpOnSocket" . }}
- name: ACCEL_HTTP_ADDRESS
  value: {{ printf "unix:%s/http.sock" (trimSuffix "/" .Values.unixSocket.dir) | quote }}
{{- end }}
- name: ACCEL_UNIX_SOCKET_MODE
  value: {{ .Values.unixSocket.mode | quote }}
{{- end }}
{{- if .Values.sharedMemory.enabled }}
- name: ACCEL_ALLOW_CLIENT_SHM
  value: "true"
{{- with .Values.sharedMemory.allowedUids }}
{{- $uids := list }}
{{- range . }}{{ $uids = append $uids (int64 . | toString) }}{{ end }}
- name: ACCEL_SHM_ALLOWED_UIDS
  value: {{ join "," $uids | quote }}
{{- end }}
- name: ACCEL_SHM_MAX_REGIONS
  value: {{ int64 .Values.sharedMemory.maxRegions | toString | quote }}
{{- end }}
{{- if and .Values.gpu.enabled (not (hasKey .Values.accel "gpu")) }}
{{- /* The device plugin exposes the GPUs it allocated as 0..count-1 inside the container. */}}
- name: ACCEL_GPU
  value: "0"
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volumes of the pod. */}}
{{- define "accel.volumes" -}}
- name: model-repository
  {{- if eq .Values.modelRepository.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ required "modelRepository.pvc.claimName is required when modelRepository.source is pvc" .Values.modelRepository.pvc.claimName }}
    readOnly: true
  {{- else if eq .Values.modelRepository.source "hostPath" }}
  hostPath:
    path: {{ .Values.modelRepository.hostPath.path }}
    type: {{ .Values.modelRepository.hostPath.type }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .Values.modelRepository.emptyDir.sizeLimit }}
  {{- end }}
{{- if .Values.sharedMemory.enabled }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.sharedMemory.sizeLimit }}
{{- end }}
{{- if .Values.unixSocket.enabled }}
- name: accel-socket
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end -}}

{{/* Mounts shared by Accel and the predictor. */}}
{{- define "accel.sharedMounts" -}}
{{- if .Values.sharedMemory.enabled }}
- name: dshm
  mountPath: /dev/shm
{{- end }}
{{- if .Values.unixSocket.enabled }}
- name: accel-socket
  mountPath: {{ .Values.unixSocket.dir }}
{{- end }}
{{- end -}}

{{/* A probe's request. The kubelet reaches TCP only: with REST on the Unix socket (unixSocket.http) the
     probes fall back to the metrics port, which says that Accel is up but not that it is ready.
     Argument: a dict with "ctx" and "path" (the REST health path). */}}
{{- define "accel.probeAction" -}}
httpGet:
{{- if include "accel.httpOnSocket" .ctx }}
  path: /metrics
  port: {{ .ctx.Values.accel.metricsPort }}
{{- else }}
  path: {{ .path }}
  port: {{ .ctx.Values.accel.httpPort }}
{{- end }}
{{- end -}}

{{- define "accel.tolerations" -}}
{{- $t := .Values.tolerations -}}
{{- if and .Values.gpu.enabled (not $t) -}}
{{- $t = list (dict "key" .Values.gpu.resourceName "operator" "Exists" "effect" "NoSchedule") -}}
{{- end -}}
{{- with $t }}
{{- toYaml . }}
{{- end -}}
{{- end -}}

{{/* The Accel container. Argument: a dict with "ctx" (the root context) and "name". */}}
{{- define "accel.container" -}}
{{- $ := .ctx -}}
- name: {{ .name }}
  image: {{ include "accel.image" $ | quote }}
  imagePullPolicy: {{ $.Values.image.pullPolicy }}
  args: ["serve"]
  env:
    {{- include "accel.env" $ | nindent 4 }}
  ports:
    {{- if not $.Values.unixSocket.enabled }}
    - name: grpc
      containerPort: {{ $.Values.accel.grpcPort }}
      protocol: TCP
    {{- end }}
    {{- if not (include "accel.httpOnSocket" $) }}
    - name: http
      containerPort: {{ $.Values.accel.httpPort }}
      protocol: TCP
    {{- end }}
    - name: metrics
      containerPort: {{ $.Values.accel.metricsPort }}
      protocol: TCP
  startupProbe:
    {{- include "accel.probeAction" (dict "ctx" $ "path" "/v2/health/live") | nindent 4 }}
    {{- toYaml $.Values.probes.startup | nindent 4 }}
  livenessProbe:
    {{- include "accel.probeAction" (dict "ctx" $ "path" "/v2/health/live") | nindent 4 }}
    {{- toYaml $.Values.probes.liveness | nindent 4 }}
  readinessProbe:
    {{- include "accel.probeAction" (dict "ctx" $ "path" "/v2/health/ready") | nindent 4 }}
    {{- toYaml $.Values.probes.readiness | nindent 4 }}
  resources:
    {{- $resources := deepCopy $.Values.resources }}
    {{- if $.Values.gpu.enabled }}
    {{- $limits := default dict $resources.limits }}
    {{- $_ := set $limits $.Values.gpu.resourceName $.Values.gpu.count }}
    {{- $_ := set $resources "limits" $limits }}
    {{- end }}
    {{- toYaml $resources | nindent 4 }}
  securityContext:
    {{- toYaml $.Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: model-repository
      mountPath: {{ $.Values.modelRepository.mountPath }}
      readOnly: true
    - name: tmp
      mountPath: /tmp
    {{- include "accel.sharedMounts" $ | trim | nindent 4 }}
{{- end -}}

{{/* A predictor container. Argument: dict with "ctx", "name" and "spec" (the predictor values). */}}
{{- define "accel.predictorContainer" -}}
{{- $ := .ctx -}}
{{- $p := .spec -}}
- name: {{ .name }}
  image: {{ printf "%s:%s" $p.image.repository $p.image.tag | quote }}
  imagePullPolicy: {{ $p.image.pullPolicy }}
  {{- with $p.command }}
  command:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $p.args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  env:
    - name: ACCEL_GRPC_URL
      value: {{ include "accel.grpcUrl" $ | quote }}
    - name: ACCEL_HTTP_URL
      value: {{ include "accel.httpUrl" $ | quote }}
    {{- if $.Values.unixSocket.enabled }}
    - name: ACCEL_SOCKET_DIR
      value: {{ $.Values.unixSocket.dir | quote }}
    {{- end }}
    {{- with $p.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $p.ports }}
  ports:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml $p.resources | nindent 4 }}
  securityContext:
    {{- toYaml $.Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    {{- include "accel.sharedMounts" $ | trim | nindent 4 }}
{{- end -}}

{{- define "accel.initContainer" -}}
{{- if and .Values.modelRepository.init.enabled (eq .Values.modelRepository.source "emptyDir") }}
- name: model-repository-init
  image: {{ .Values.modelRepository.init.image | quote }}
  command:
    {{- toYaml .Values.modelRepository.init.command | nindent 4 }}
  resources:
    {{- toYaml .Values.modelRepository.init.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: model-repository
      mountPath: {{ .Values.modelRepository.mountPath }}
{{- end }}
{{- end -}}

{{/* Fails the render when the drain could be cut short by the kubelet. */}}
{{- define "accel.checkGrace" -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (int .Values.accel.exitTimeoutSecs) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed accel.exitTimeoutSecs (%v): the kubelet would kill Accel mid-drain" .Values.terminationGracePeriodSeconds .Values.accel.exitTimeoutSecs) -}}
{{- end -}}
{{- end -}}
