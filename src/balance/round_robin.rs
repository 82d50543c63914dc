//! Plain round robin: strict rotation over the candidates, ignoring weights.

use super::{PickRequest, Selector};

/// RoundRobin is strict rotation: 0, 1, …, n-1, 0, … starting at 0.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    /// Number of candidates.
    len: usize,
    /// The candidate the next pick returns.
    next: usize,
}

impl RoundRobin {
    /// Builds a rotation over `len` candidates.
    pub fn new(len: usize) -> Self {
        RoundRobin { len, next: 0 }
    }
}

impl Selector for RoundRobin {
    #[inline]
    fn pick(&mut self, _req: &PickRequest<'_>) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let candidate = self.next;
        self.next = if candidate + 1 == self.len {
            0
        } else {
            candidate + 1
        };
        Some(candidate)
    }

    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_in_order() {
        let mut rr = RoundRobin::new(3);
        let got: Vec<usize> = (0..7)
            .map(|_| {
                rr.pick(&PickRequest {
                    hash: None,
                    nth: 0,
                    loads: &[],
                })
                .unwrap()
            })
            .collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2, 0]);
    }
}
