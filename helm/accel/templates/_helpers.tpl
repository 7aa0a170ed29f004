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

{{- define "accel.grpcAddress" -}}
{{- if eq (toString .Values.accel.grpcAddress) "auto" -}}
{{- if include "accel.hasPredictor" . -}}127.0.0.1{{- else -}}0.0.0.0{{- end -}}
{{- else -}}
{{- .Values.accel.grpcAddress -}}
{{- end -}}
{{- end -}}

{{/* Accel's flags as ACCEL_* variables: every key of .Values.accel, camelCase -> UPPER_SNAKE; empty
     lists and strings are left out (the flag's default applies). */}}
{{- define "accel.env" -}}
- name: ACCEL_MODEL_REPOSITORY
  value: {{ .Values.modelRepository.mountPath | quote }}
{{- range $key, $value := .Values.accel }}
{{- if not (and (or (kindIs "slice" $value) (kindIs "string" $value)) (empty $value)) }}
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
{{- if .Values.socket.enabled }}
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
{{- if .Values.socket.enabled }}
- name: accel-socket
  mountPath: {{ .Values.socket.mountPath }}
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
    - name: grpc
      containerPort: {{ $.Values.accel.grpcPort }}
      protocol: TCP
    - name: http
      containerPort: {{ $.Values.accel.httpPort }}
      protocol: TCP
    - name: metrics
      containerPort: {{ $.Values.accel.metricsPort }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /v2/health/live
      port: {{ $.Values.accel.httpPort }}
    {{- toYaml $.Values.probes.startup | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /v2/health/live
      port: {{ $.Values.accel.httpPort }}
    {{- toYaml $.Values.probes.liveness | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /v2/health/ready
      port: {{ $.Values.accel.httpPort }}
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
      value: {{ printf "localhost:%v" $.Values.accel.grpcPort | quote }}
    - name: ACCEL_HTTP_URL
      value: {{ printf "http://localhost:%v" $.Values.accel.httpPort | quote }}
    {{- if $.Values.socket.enabled }}
    - name: ACCEL_SOCKET_DIR
      value: {{ $.Values.socket.mountPath | quote }}
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
