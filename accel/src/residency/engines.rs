//! Which engine runs a model: Triton's rule (`backend: "onnxruntime"`, or `platform:
//! "onnxruntime_onnx"` with no backend) plus `backend: "candle"` for Accel's own executor, and a
//! server default for models that name no backend. ONNX Runtime is there only when its library was
//! given and loaded; a model that needs it otherwise is UNAVAILABLE with the reason.

use std::path::Path;

use crate::backend::Backend;
use crate::backend::candle::CandleBackend;
use crate::backend::hf::HfBackend;
use crate::backend::onnxruntime::OrtBackend;

/// The engine for ONNX models whose config names no backend (`--default-backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DefaultBackend {
    /// ONNX Runtime when its library is loaded, else candle.
    Auto,
    Onnxruntime,
    Candle,
}

/// The engines of this server.
#[derive(Debug)]
pub(super) struct Engines {
    candle: CandleBackend,
    /// Hugging Face directories, on the same device.
    hf: HfBackend,
    /// ONNX Runtime, or why it is not available.
    onnxruntime: Result<OrtBackend, String>,
    default: DefaultBackend,
}

impl Engines {
    /// Candle on `device`, and ONNX Runtime (on GPU `gpu` when it has its CUDA provider) from `library` when given (a failure to load it is logged
    /// and reported by the models that need it).
    pub(super) fn new(
        library: Option<&Path>,
        default: DefaultBackend,
        intra_threads: usize,
        device: &candle_core::Device,
        gpu: Option<usize>,
        limits: crate::backend::ExecLimits,
    ) -> Self {
        let onnxruntime = match library {
            Some(path) => OrtBackend::open_on(path, intra_threads, gpu),
            None => Err(
                "ONNX Runtime is not loaded: start Accel with --onnxruntime-library PATH, the \
                         libonnxruntime.so.1.x of PyPI's onnxruntime wheel (onnxruntime/capi/)"
                    .into(),
            ),
        };
        match (&onnxruntime, library) {
            (Ok(_), Some(path)) => tracing::info!(library = %path.display(), "ONNX Runtime loaded"),
            (Err(reason), Some(_)) => tracing::error!(%reason, "ONNX Runtime is not available"),
            _ => {}
        }
        Engines {
            candle: CandleBackend::on(device.clone()).with_limits(limits),
            hf: HfBackend::on(device.clone()).with_limits(limits),
            onnxruntime,
            default,
        }
    }

    fn onnxruntime(&self) -> Result<&dyn Backend, String> {
        self.onnxruntime
            .as_ref()
            .map(|b| b as &dyn Backend)
            .map_err(|reason| format!("backend 'onnxruntime': {reason}"))
    }

    /// The engine a model's config selects.
    pub(super) fn select(&self, backend: &str, platform: &str) -> Result<&dyn Backend, String> {
        match (backend, platform) {
            ("candle", _) => Ok(&self.candle),
            (crate::backend::hf::BACKEND, _) => Ok(&self.hf),
            ("onnxruntime", _) => self.onnxruntime(),
            ("", "onnxruntime_onnx" | "onnx_onnxv1" | "") => match self.default {
                DefaultBackend::Candle => Ok(&self.candle),
                DefaultBackend::Onnxruntime => self.onnxruntime(),
                DefaultBackend::Auto => Ok(self.onnxruntime().unwrap_or(&self.candle)),
            },
            ("", platform) => Err(format!(
                "platform '{platform}' is not supported: Accel serves ONNX models (platform onnxruntime_onnx)"
            )),
            (backend, _) => Err(format!(
                "backend '{backend}' is not supported: Accel runs ONNX models with 'onnxruntime' or 'candle'"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triton_fields_select_the_engine() {
        let e = Engines::new(
            None,
            DefaultBackend::Auto,
            1,
            &candle_core::Device::Cpu,
            None,
            Default::default(),
        );
        assert_eq!(e.select("candle", "").map(|b| b.name()), Ok("candle"));
        assert_eq!(e.select("", "onnxruntime_onnx").map(|b| b.name()), Ok("candle"));
        assert!(
            e.select("onnxruntime", "")
                .unwrap_err()
                .contains("--onnxruntime-library")
        );
        assert!(e.select("", "tensorflow_savedmodel").unwrap_err().contains("platform"));
        assert!(e.select("python", "").unwrap_err().contains("'python'"));
        let strict = Engines::new(
            None,
            DefaultBackend::Onnxruntime,
            1,
            &candle_core::Device::Cpu,
            None,
            Default::default(),
        );
        assert!(strict.select("", "").is_err());
        let missing = Engines::new(
            Some(Path::new("/nonexistent/libonnxruntime.so.1")),
            DefaultBackend::Auto,
            1,
            &candle_core::Device::Cpu,
            None,
            Default::default(),
        );
        let reason = missing.select("onnxruntime", "").unwrap_err();
        assert!(reason.contains("/nonexistent/libonnxruntime.so.1"), "{reason}");
    }
}
