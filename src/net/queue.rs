//! A connection's outgoing frames, in order.
//!
//! Most of the time a connection has none queued or one (a reply, a
//! delivery of a fan-out), written within the same turn of the loop. A
//! `VecDeque` would allocate its buffer for that one frame and free it when
//! the connection goes idle: an allocation and a free per delivery, the
//! biggest cost of a fan-out after the kernel's. So one frame is held
//! inline, and only a burst spills into a `VecDeque` (freed with the
//! connection's buffers when it is idle again).

use std::collections::VecDeque;

use super::frame::Frame;

#[derive(Debug, Default)]
pub(super) enum Queue {
    #[default]
    Empty,
    One(Frame),
    Many(VecDeque<Frame>),
}

impl Queue {
    pub(super) fn push_back(&mut self, frame: Frame) {
        match std::mem::take(self) {
            Queue::Empty => *self = Queue::One(frame),
            Queue::One(first) => {
                let mut many = VecDeque::with_capacity(4);
                many.push_back(first);
                many.push_back(frame);
                *self = Queue::Many(many);
            }
            Queue::Many(mut many) => {
                many.push_back(frame);
                *self = Queue::Many(many);
            }
        }
    }

    pub(super) fn front(&self) -> Option<&Frame> {
        match self {
            Queue::Empty => None,
            Queue::One(f) => Some(f),
            Queue::Many(many) => many.front(),
        }
    }

    pub(super) fn pop_front(&mut self) -> Option<Frame> {
        match self {
            Queue::Many(many) => many.pop_front(),
            _ => match std::mem::take(self) {
                Queue::One(f) => Some(f),
                _ => None,
            },
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Queue::Empty => 0,
            Queue::One(_) => 1,
            Queue::Many(many) => many.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `n` frames, front first.
    pub(super) fn first(&self, n: usize) -> impl Iterator<Item = &Frame> {
        let (one, many) = match self {
            Queue::Empty => (None, None),
            Queue::One(f) => (Some(f), None),
            Queue::Many(many) => (None, Some(many.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten()).take(n)
    }

    /// Drops every frame and the spill buffer.
    pub(super) fn clear(&mut self) {
        *self = Queue::Empty;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(q: &Queue) -> Vec<String> {
        q.first(usize::MAX).map(|f| String::from_utf8_lossy(&f.as_bytes()[2..]).into_owned()).collect()
    }

    #[test]
    fn frames_come_out_in_order_through_one_inline_and_a_spilled_burst() {
        let mut q = Queue::default();
        assert!(q.is_empty() && q.front().is_none());
        q.push_back(Frame::text("a"));
        assert!(matches!(q, Queue::One(_)), "one frame needs no buffer");
        q.push_back(Frame::text("b"));
        q.push_back(Frame::text("c"));
        assert_eq!((q.len(), frames(&q)), (3, vec!["a".to_string(), "b".into(), "c".into()]));
        assert_eq!(q.first(2).count(), 2);
        assert_eq!(q.pop_front().map(|f| f.as_bytes()[2]), Some(b'a'));
        q.push_back(Frame::text("d"));
        assert_eq!(frames(&q), ["b", "c", "d"]);
        while q.pop_front().is_some() {}
        assert!(q.is_empty());
        q.clear();
        q.push_back(Frame::text("e"));
        assert_eq!(q.pop_front().map(|f| f.as_bytes()[2]), Some(b'e'));
        assert!(matches!(q, Queue::Empty));
    }
}
