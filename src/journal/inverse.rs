//! The rewrite that takes a rewritten file back to its original, holding only the original
//! bytes the new content lost: the header ranges autopatch overwrote and the old growth region
//! it rebuilt. Everything else is copied back from the new content itself.

use crate::elf::{Rewrite, TailMove, Write};

/// A byte range `[start, end)`.
pub type Span = (u64, u64);

/// The ranges `rewrite` writes, within its output, sorted and merged.
pub fn written_spans(rewrite: &Rewrite) -> Vec<Span> {
    normalize(
        rewrite
            .writes
            .iter()
            .map(|w| (w.offset, (w.offset + w.bytes.len() as u64).min(rewrite.len)))
            .collect(),
    )
}

/// The rewrite that turns `rewrite.apply(input)` back into `input`.
pub fn inverse(input: &[u8], rewrite: &Rewrite) -> Rewrite {
    let len = input.len() as u64;
    let keep = rewrite.keep.min(len).min(rewrite.len);
    let written = written_spans(rewrite);
    let tail = rewrite.tail.filter(|t| t.len > 0);
    let moved_out = tail.map(|t| (t.to, t.to + t.len));
    let moved_in = tail.map(|t| (t.from, (t.from + t.len).min(len)));
    // Kept bytes survive where nothing was written or moved over them; moved bytes where
    // nothing was written over them at their new place.
    let mut intact = subtract(
        &[(0, keep)],
        &normalize(
            written
                .iter()
                .copied()
                .chain(moved_out)
                .chain(moved_in)
                .collect(),
        ),
    );
    if let Some(t) = tail {
        let overwritten: Vec<Span> = written
            .iter()
            .filter_map(|&(s, e)| {
                let (s, e) = (s.max(t.to), e.min(t.to + t.len));
                (s < e).then(|| (s - t.to + t.from, e - t.to + t.from))
            })
            .collect();
        intact.extend(subtract(
            &[(t.from, (t.from + t.len).min(len))],
            &normalize(overwritten),
        ));
    }
    let lost = subtract(&[(0, len)], &normalize(intact));
    Rewrite {
        keep,
        tail: tail.map(|t| TailMove {
            from: t.to,
            len: t.len,
            to: t.from,
        }),
        writes: lost
            .into_iter()
            .map(|(s, e)| Write {
                offset: s,
                bytes: input[s as usize..e as usize].to_vec(),
            })
            .collect(),
        len,
    }
}

/// Sorts and merges spans, dropping empty ones.
fn normalize(mut spans: Vec<Span>) -> Vec<Span> {
    spans.retain(|s| s.0 < s.1);
    spans.sort_unstable();
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last) if s.0 <= last.1 => last.1 = last.1.max(s.1),
            _ => out.push(s),
        }
    }
    out
}

/// `from` without `remove`; both normalized.
fn subtract(from: &[Span], remove: &[Span]) -> Vec<Span> {
    let mut out = Vec::new();
    for &(mut start, end) in from {
        for &(rs, re) in remove {
            if re <= start || rs >= end {
                continue;
            }
            if rs > start {
                out.push((start, rs));
            }
            start = re;
            if start >= end {
                break;
            }
        }
        if start < end {
            out.push((start, end));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rewrite_strategy() -> impl Strategy<Value = (Vec<u8>, Rewrite)> {
        (0usize..300, 0usize..400).prop_flat_map(|(len, new_len)| {
            let input = proptest::collection::vec(any::<u8>(), len);
            let keep = 0..=len as u64 + 8;
            let tail = proptest::option::of((0..=len as u64, 0..=len as u64, 0..=new_len as u64));
            let writes = proptest::collection::vec(
                (
                    0..=new_len as u64,
                    proptest::collection::vec(any::<u8>(), 0..40),
                ),
                0..6,
            );
            (input, keep, tail, writes).prop_map(move |(input, keep, tail, writes)| {
                let new_len = new_len as u64;
                let tail = tail.map(|(from, l, to)| {
                    let l = l.min(input.len() as u64 - from).min(new_len - to);
                    TailMove { from, len: l, to }
                });
                let writes = writes
                    .into_iter()
                    .map(|(offset, mut bytes)| {
                        bytes.truncate((new_len - offset) as usize);
                        Write { offset, bytes }
                    })
                    .collect();
                let rewrite = Rewrite {
                    keep,
                    tail,
                    writes,
                    len: new_len,
                };
                (input, rewrite)
            })
        })
    }

    proptest! {
        #[test]
        fn the_inverse_gives_the_input_back((input, rewrite) in rewrite_strategy()) {
            let output = rewrite.apply(&input);
            let back = inverse(&input, &rewrite);
            prop_assert_eq!(back.apply(&output), input);
        }

        #[test]
        fn windows_are_slices_of_the_output((input, rewrite) in rewrite_strategy(), a in 0u64..400, b in 0u64..400) {
            let output = rewrite.apply(&input);
            let (start, end) = (a.min(b).min(rewrite.len), a.max(b).min(rewrite.len));
            prop_assert_eq!(
                rewrite.window(&input, start, end),
                output[start as usize..end as usize].to_vec()
            );
        }
    }

    #[test]
    fn an_append_keeps_only_the_overwritten_header_bytes() {
        let input: Vec<u8> = (0..100).collect();
        let rewrite = Rewrite {
            keep: 100,
            tail: None,
            writes: vec![
                Write {
                    offset: 120,
                    bytes: vec![7; 30],
                },
                Write {
                    offset: 10,
                    bytes: vec![9; 4],
                },
            ],
            len: 150,
        };
        let back = inverse(&input, &rewrite);
        assert_eq!(back.keep, 100);
        assert_eq!(back.len, 100);
        assert_eq!(
            back.writes,
            vec![Write {
                offset: 10,
                bytes: vec![10, 11, 12, 13]
            }]
        );
    }

    #[test]
    fn subtraction_and_merging() {
        assert_eq!(
            normalize(vec![(5, 9), (0, 2), (2, 3), (8, 8)]),
            vec![(0, 3), (5, 9)]
        );
        assert_eq!(
            subtract(&[(0, 10), (20, 30)], &[(2, 4), (8, 22), (29, 40)]),
            vec![(0, 2), (4, 8), (22, 29)]
        );
    }
}
