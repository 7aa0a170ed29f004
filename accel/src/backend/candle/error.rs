//! candle errors as client-facing text: candle attaches a backtrace to errors when `RUST_BACKTRACE` is
//! set, which must not reach a client (or a log line per failed request).

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
    }
}
