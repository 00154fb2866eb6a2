//! Turning a caught panic payload into text.
//!
//! A panic crosses the coroutine boundary as `Box<dyn Any + Send>`; error handlers want the
//! message, which `panic!` stores as either `&'static str` or `String`.

use std::any::Any;

/// The message of a panic payload, or `"<non-string panic payload>"` when the panic was
/// raised with a value that is not a string (`std::panic::panic_any`).
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "<non-string panic payload>"
    }
}

#[cfg(test)]
mod tests {
    use super::panic_message;

    #[test]
    fn message_from_str_and_string_payloads() {
        let a = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(&*a), "static");
        let b = std::panic::catch_unwind(|| panic!("formatted {}", 42)).unwrap_err();
        assert_eq!(panic_message(&*b), "formatted 42");
        let c = std::panic::catch_unwind(|| std::panic::panic_any(7u32)).unwrap_err();
        assert_eq!(panic_message(&*c), "<non-string panic payload>");
    }
}
