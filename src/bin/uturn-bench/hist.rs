//! A fixed-size latency histogram: 1 µs buckets up to 10 ms, then 100 µs buckets up to
//! 1 s, then one overflow bucket. Recording never allocates.

const FINE: usize = 10_000;
const COARSE: usize = 9_900;

pub struct Histogram {
    buckets: Box<[u64]>,
    count: u64,
    max_us: u64,
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            buckets: vec![0; FINE + COARSE + 1].into_boxed_slice(),
            count: 0,
            max_us: 0,
        }
    }

    pub fn record(&mut self, us: u64) {
        let i = if us < FINE as u64 {
            us as usize
        } else {
            (FINE + ((us - FINE as u64) / 100) as usize).min(FINE + COARSE)
        };
        self.buckets[i] += 1;
        self.count += 1;
        self.max_us = self.max_us.max(us);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The value at quantile `q` (0..=1), in microseconds.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return if i < FINE {
                    i as u64
                } else if i < FINE + COARSE {
                    FINE as u64 + (i - FINE) as u64 * 100
                } else {
                    self.max_us
                };
            }
        }
        self.max_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for us in 1..=1000 {
            h.record(us);
        }
        assert_eq!(h.quantile(0.5), 500);
        assert_eq!(h.quantile(0.99), 990);
        assert_eq!(h.quantile(1.0), 1000);
        h.record(2_000_000);
        assert_eq!(h.quantile(1.0), 2_000_000);
        let mut g = Histogram::new();
        g.record(15_050);
        assert_eq!(g.quantile(0.5), 15_000);
    }
}
