//! The queues, one list: every `match` over [`Queue`] fails to compile until a new queue is
//! handled. A leaf module (it imports only the engine's `QueueName`), so that the settings can
//! check queue names against it.

use crate::queue::QueueName;

/// The queues, one list. Adding a queue here makes every `match` over it (the workers') fail to
/// compile until the queue is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    Stock,
    Invoices,
    Emails,
    Forecasts,
    Imports,
    Webhooks,
}

impl Queue {
    pub const ALL: [Queue; 6] = [
        Queue::Stock,
        Queue::Invoices,
        Queue::Emails,
        Queue::Forecasts,
        Queue::Imports,
        Queue::Webhooks,
    ];

    /// The queue's name in the API, in Redis keys and in job ids.
    pub const fn name(self) -> &'static str {
        match self {
            Queue::Stock => "stock",
            Queue::Invoices => "invoices",
            Queue::Emails => "emails",
            Queue::Forecasts => "forecasts",
            Queue::Imports => "imports",
            Queue::Webhooks => "webhooks",
        }
    }

    pub fn parse(raw: &str) -> Option<Queue> {
        Queue::ALL.into_iter().find(|q| q.name() == raw)
    }

    /// The engine's handle on this queue.
    pub fn id(self) -> QueueName {
        QueueName::parse(self.name()).expect("every queue's name is well-formed")
    }

    /// Every queue's name, comma-separated (for messages that list them).
    pub fn names() -> String {
        Queue::ALL.map(Queue::name).join(", ")
    }
}

impl std::fmt::Display for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_parses_back_from_its_name_and_names_are_unique() {
        for q in Queue::ALL {
            assert_eq!(Queue::parse(q.name()), Some(q));
            assert_eq!(q.id().as_str(), q.name());
        }
        let names: std::collections::HashSet<_> = Queue::ALL.map(Queue::name).into();
        assert_eq!(names.len(), Queue::ALL.len());
        assert_eq!(Queue::parse("nope"), None);
        assert_eq!(
            Queue::names(),
            "stock, invoices, emails, forecasts, imports, webhooks"
        );
    }
}
