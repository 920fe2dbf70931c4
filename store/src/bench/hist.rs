//! Fixed-bucket, log-linear latency histogram (HDR-like, ~1.6% worst-case
//! relative error), in microseconds.
//!
//! Values below [`LINEAR`] get one bucket each (exact). Above that, every
//! power-of-two range `[2^e, 2^(e+1))` is split into [`SUB`] equal
//! sub-buckets, so a bucket's width is at most `1/SUB` of its lower bound.
//! Recording is O(1) with no allocation; histograms merge by adding counts.

/// Values `< LINEAR` are stored exactly.
const LINEAR: u64 = 128;
/// Sub-buckets per power of two above `LINEAR` (must be `LINEAR / 2`).
const SUB: u64 = 64;
/// log2(SUB).
const SUB_BITS: u32 = 6;
/// Number of buckets: the linear ones plus `SUB` per exponent 7..=63.
const BUCKETS: usize = (LINEAR + (64 - 7) * SUB) as usize;

/// Latency histogram over `u64` microsecond values.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// Index of the bucket holding `v`.
fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // floor(log2 v), >= 7
    let shift = e - SUB_BITS;
    let m = v >> shift; // in [SUB, 2*SUB)
    (LINEAR + u64::from(e - 7) * SUB + (m - SUB)) as usize
}

/// Highest value that maps to bucket `i` (what percentiles report, like HDR's
/// "highest equivalent value").
fn bucket_high(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let e = (i - LINEAR) / SUB + 7;
    let m = (i - LINEAR) % SUB + SUB;
    let shift = e as u32 - SUB_BITS;
    // (m + 1) << shift can overflow only for the very last bucket.
    ((m + 1) << shift).wrapping_sub(1).max(m << shift)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Records one value (microseconds).
    pub fn record(&mut self, v: u64) {
        self.counts[bucket_of(v)] += 1;
        self.total += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Records a duration, saturating at `u64::MAX` microseconds.
    pub fn record_duration(&mut self, d: std::time::Duration) {
        self.record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Adds all of `other`'s samples to `self`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += *b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Number of recorded values.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True when nothing was recorded.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Exact maximum (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Exact minimum (0 when empty).
    pub fn min(&self) -> u64 {
        if self.total == 0 { 0 } else { self.min }
    }

    /// Exact arithmetic mean (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at percentile `p` (0..=100): the smallest bucket bound such
    /// that at least `ceil(p% * n)` samples are at or below it (nearest-rank
    /// definition), clamped to the exact min/max. 0 when empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p.clamp(0.0, 100.0) / 100.0) * self.total as f64).ceil() as u64;
        let rank = rank.clamp(1, self.total);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += *c;
            if seen >= rank {
                return bucket_high(i).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::super::rng::Rng;
    use super::*;

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.len(), 100);
        assert_eq!(h.percentile(50.0), 50);
        assert_eq!(h.percentile(90.0), 90);
        assert_eq!(h.percentile(99.0), 99);
        assert_eq!(h.percentile(100.0), 100);
        assert_eq!(h.percentile(0.0), 1);
        assert_eq!(h.min(), 1);
        assert_eq!(h.max(), 100);
        assert!((h.mean() - 50.5).abs() < 1e-9);
    }

    #[test]
    fn buckets_are_contiguous_and_bounded() {
        // Every bucket's high bound maps back to that bucket, and the next
        // value starts the next bucket: no gaps, no overlaps.
        for i in 0..BUCKETS - 1 {
            let hi = bucket_high(i);
            assert_eq!(bucket_of(hi), i, "bucket {i} high {hi}");
            assert_eq!(bucket_of(hi + 1), i + 1, "bucket {i} high+1");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn relative_error_is_small() {
        let mut rng = Rng::with_seed(7);
        for _ in 0..100_000 {
            let shift = rng.below(60);
            let v = rng.below(u64::MAX >> shift);
            let hi = bucket_high(bucket_of(v));
            assert!(hi >= v);
            let err = (hi - v) as f64 / (v.max(1)) as f64;
            assert!(err <= 1.0 / SUB as f64, "v={v} hi={hi} err={err}");
        }
    }

    #[test]
    fn percentiles_match_sorted_vec_within_precision() {
        let mut rng = Rng::with_seed(42);
        let mut h = Histogram::new();
        let mut parts = [Histogram::new(), Histogram::new()];
        let mut all = Vec::new();
        for i in 0..50_000 {
            // Log-uniform-ish latencies between 10us and ~1s.
            let v = 10 + (rng.f64().powi(4) * 1_000_000.0) as u64;
            h.record(v);
            parts[i % 2].record(v);
            all.push(v);
        }
        all.sort_unstable();
        let mut merged = Histogram::new();
        merged.merge(&parts[0]);
        merged.merge(&parts[1]);
        for p in [50.0, 90.0, 99.0, 99.9, 100.0] {
            let rank = ((p / 100.0) * all.len() as f64).ceil() as usize;
            let exact = all[rank.max(1) - 1];
            let got = h.percentile(p);
            assert!(got >= exact, "p{p}: {got} < {exact}");
            assert!(
                (got - exact) as f64 <= exact as f64 / SUB as f64 + 1.0,
                "p{p}: {got} vs {exact}"
            );
            assert_eq!(merged.percentile(p), got);
        }
        assert_eq!(h.max(), *all.last().unwrap_or(&0));
        assert_eq!(merged.len(), h.len());
    }

    #[test]
    fn empty_histogram() {
        let h = Histogram::new();
        assert!(h.is_empty());
        assert_eq!(h.percentile(99.0), 0);
        assert_eq!(h.min(), 0);
        assert_eq!(h.mean(), 0.0);
    }
}
