//! The conversation as the APIs that require alternating turns take it (Anthropic Messages,
//! Bedrock Converse): system messages left out (each adapter places them), consecutive
//! messages of one role gathered into one turn, and the first turn the user's.

use taskexec_core::error::ProviderError;
use taskexec_core::task::{ChatMessage, Role};

/// One turn: a role (user or assistant) and the texts of its consecutive messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Turn<'a> {
    pub role: Role,
    pub texts: Vec<&'a str>,
}

/// The user and assistant turns of `messages`; `provider` names the API in the errors (a
/// conversation without a user message, or starting with the assistant, is permanent).
pub(crate) fn turns<'a>(messages: &'a [ChatMessage], provider: &str) -> Result<Vec<Turn<'a>>, ProviderError> {
    let mut turns: Vec<Turn<'a>> = Vec::new();
    for m in messages.iter().filter(|m| m.role != Role::System) {
        match turns.last_mut() {
            Some(last) if last.role == m.role => last.texts.push(&m.content),
            _ => turns.push(Turn { role: m.role, texts: vec![&m.content] }),
        }
    }
    match turns.first() {
        None => Err(ProviderError::permanent(format!("{provider} needs at least one user message; the task has none"))),
        Some(Turn { role: Role::Assistant, .. }) => Err(ProviderError::permanent(format!(
            "{provider} requires the conversation to start with a user message; `parameters.messages` starts with an assistant message"
        ))),
        Some(_) => Ok(turns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::message;

    #[test]
    fn consecutive_messages_of_one_role_are_one_turn_and_system_is_left_out() {
        let messages = [
            message(Role::System, "s"),
            message(Role::User, "a"),
            message(Role::User, "b"),
            message(Role::Assistant, "c"),
        ];
        let got = turns(&messages, "X").unwrap();
        assert_eq!(
            got,
            [Turn { role: Role::User, texts: vec!["a", "b"] }, Turn { role: Role::Assistant, texts: vec!["c"] }]
        );
    }

    #[test]
    fn no_user_message_or_an_assistant_first_is_permanent() {
        let e = turns(&[message(Role::System, "s")], "X").unwrap_err();
        assert!(e.to_string().contains("X needs at least one user message"), "{e}");
        let e = turns(&[message(Role::Assistant, "c"), message(Role::User, "a")], "X").unwrap_err();
        assert!(e.to_string().contains("X requires the conversation to start with a user message"), "{e}");
    }
}
