//! The `Range` request header (RFC 9110 §14), in the one form registry
//! clients send: a single byte range, used to resume an interrupted layer
//! download.

/// What a `Range` header asks of a representation of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// Serve the whole representation with 200: the header was absent,
    /// malformed, or asked for several ranges. RFC 9110 lets a server
    /// ignore Range, and a whole response is always a correct one.
    Whole,
    /// Serve bytes `start..=end` with 206.
    Part { start: u64, end: u64 },
    /// No byte of the representation is in the range: 416.
    Unsatisfiable,
}

/// Interprets the value of a single `Range` header against a
/// representation of `size` bytes.
///
/// An empty representation is always served whole: every range of it is
/// unsatisfiable in theory, but a client reading an empty blob "from byte
/// 0" is better served by 200 than by a 416 it must special-case.
pub fn parse(header: &str, size: u64) -> RangeRequest {
    if size == 0 {
        return RangeRequest::Whole;
    }
    let Some((unit, spec)) = header.trim().split_once('=') else {
        return RangeRequest::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    match (number(first), number(last)) {
        // bytes=-n: the last n bytes.
        (None, Some(n)) if first.is_empty() => {
            if n == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part {
                    start: size.saturating_sub(n),
                    end: size - 1,
                }
            }
        }
        // bytes=a-: from a to the end.
        (Some(start), None) if last.is_empty() => bounded(start, size - 1, size),
        // bytes=a-b: a > b is a syntax error, not an unsatisfiable range.
        (Some(start), Some(end)) if start <= end => bounded(start, end.min(size - 1), size),
        _ => RangeRequest::Whole,
    }
}

fn bounded(start: u64, end: u64, size: u64) -> RangeRequest {
    if start >= size {
        RangeRequest::Unsatisfiable
    } else {
        RangeRequest::Part { start, end }
    }
}

/// A run of ASCII digits as a number; anything else (signs, spaces,
/// overflow) is not one.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::RangeRequest::*;
    use super::*;

    #[test]
    fn single_ranges() {
        assert_eq!(parse("bytes=0-4", 10), Part { start: 0, end: 4 });
        assert_eq!(parse("bytes=3-", 10), Part { start: 3, end: 9 });
        assert_eq!(parse("bytes=-3", 10), Part { start: 7, end: 9 });
        assert_eq!(parse("bytes=-30", 10), Part { start: 0, end: 9 });
        assert_eq!(parse("bytes=5-100", 10), Part { start: 5, end: 9 });
        assert_eq!(parse("BYTES = 9-9", 10), Part { start: 9, end: 9 });
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(parse("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse("bytes=10-20", 10), Unsatisfiable);
        assert_eq!(parse("bytes=-0", 10), Unsatisfiable);
    }

    #[test]
    fn malformed_or_multiple_are_ignored() {
        for h in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=5-3",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=1-2-3",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(parse(h, 10), Whole, "{h:?}");
        }
    }

    #[test]
    fn empty_representation_is_served_whole() {
        assert_eq!(parse("bytes=0-", 0), Whole);
        assert_eq!(parse("bytes=-1", 0), Whole);
    }
}
