//! Replication lag a test imposes on a replica: none, fixed, random in a range, plus a pause
//! that holds every transaction until it is released.

use std::time::Duration;

use rand::Rng;

/// Delay between a transaction on the primary and its arrival on a replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lag {
    /// Applied as soon as the replica has copied it.
    #[default]
    None,
    Fixed(Duration),
    /// Uniformly random in `min..=max`, drawn per transaction. Transactions still arrive in
    /// order: one drawn shorter than its predecessor's waits for it.
    Random {
        min: Duration,
        max: Duration,
    },
}

impl Lag {
    /// A random lag between `min_ms` and `max_ms` milliseconds.
    pub fn random_ms(min_ms: u64, max_ms: u64) -> Lag {
        Lag::Random {
            min: Duration::from_millis(min_ms),
            max: Duration::from_millis(max_ms),
        }
    }

    pub fn fixed_ms(ms: u64) -> Lag {
        Lag::Fixed(Duration::from_millis(ms))
    }

    /// The delay for one transaction.
    pub fn sample(&self) -> Duration {
        match *self {
            Lag::None => Duration::ZERO,
            Lag::Fixed(d) => d,
            Lag::Random { min, max } if max > min => rand::thread_rng().gen_range(min..=max),
            Lag::Random { min, .. } => min,
        }
    }
}

/// What a test controls on one replica's link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LagControl {
    /// Lag given to transactions seen from now on.
    pub lag: Lag,
    /// While set, nothing is applied; transactions whose lag has run out are applied
    /// together (as the newest of them) once released.
    pub paused: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_stay_in_range() {
        assert_eq!(Lag::None.sample(), Duration::ZERO);
        assert_eq!(Lag::fixed_ms(7).sample(), Duration::from_millis(7));
        let lag = Lag::random_ms(20, 200);
        for _ in 0..1000 {
            let d = lag.sample();
            assert!(d >= Duration::from_millis(20) && d <= Duration::from_millis(200));
        }
        assert_eq!(Lag::random_ms(5, 5).sample(), Duration::from_millis(5));
        assert_eq!(Lag::random_ms(9, 1).sample(), Duration::from_millis(9));
    }
}
