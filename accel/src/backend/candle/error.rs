//! candle errors as client-facing text: candle attaches a backtrace to errors when `RUST_BACKTRACE` is
//! set, which must not reach a client (or a log line per failed request).

/// Fails a kernel because of the request's tensors (a spatial size too small for a kernel, say), not
/// because of the model or the server: the client gets INVALID_ARGUMENT. Carried through candle's
/// error type as an I/O error of kind `InvalidInput`, the one variant that can be told apart.
macro_rules! input_error {
    ($($arg:tt)*) => {
        return Err(candle_core::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!($($arg)*))).bt())
    };
}
pub(crate) use input_error;

/// The error's message without backtraces.
pub(super) fn message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => message(inner),
        other => {
            let text = other.to_string();
            match text.split_once('\n') {
                Some((first, _)) => first.to_string(),
                None => text,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backtraces_are_dropped() {
        let e = candle_core::Error::Msg("shape mismatch".into()).bt();
        assert_eq!(super::message(&e), "shape mismatch");
        assert_eq!(super::super::guard::kind(&e), None);
    }

    #[test]
    fn input_errors_are_recognised_through_backtraces() {
        fn fails() -> candle_core::Result<()> {
            super::input_error!("size {} is too small", 1)
        }
        let e = fails().unwrap_err().bt();
        assert_eq!(super::super::guard::kind(&e), Some(std::io::ErrorKind::InvalidInput));
        assert_eq!(super::message(&e), "size 1 is too small");
    }
}
