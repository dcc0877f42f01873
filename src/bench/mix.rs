//! The operation mix: which API operations the workload sends, in what proportions.
//!
//! `--mix get=80,update=20` is parsed once into integer weights; every request then draws its
//! operation with one random number. Weights are relative (they need not sum to 100), a zero
//! weight is allowed (the operation is listed but never drawn), and the canonical form printed
//! in results lists the operations in the order they were given.

use std::fmt;

use super::sampler::Rng;

/// One operation of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `GET /v1/customers/{id}` of a preloaded key; expects 200.
    Get,
    /// `PATCH /v1/customers/{id}` changing the name; expects 200.
    Update,
    /// `POST /v1/customers` of a new customer with a fresh email; expects 201.
    Create,
    /// `DELETE /v1/customers/{id}` of a preloaded key, which is then replaced; expects 204.
    Delete,
}

impl Op {
    /// Every operation, in the order help texts list them.
    pub const ALL: [Op; 4] = [Op::Get, Op::Update, Op::Create, Op::Delete];

    /// The name used in `--mix` and in results.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Update => "update",
            Op::Create => "create",
            Op::Delete => "delete",
        }
    }

    /// The HTTP status that counts as success.
    pub fn expected_status(self) -> u16 {
        match self {
            Op::Get | Op::Update => 200,
            Op::Create => 201,
            Op::Delete => 204,
        }
    }

    /// Whether the operation addresses an existing (preloaded) key.
    pub fn needs_key(self) -> bool {
        !matches!(self, Op::Create)
    }

    fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// Parsed `--mix`: operations with relative integer weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// Operations in the order given, each once.
    weights: Vec<(Op, u32)>,
    /// Sum of the weights; never zero.
    total: u64,
}

impl Mix {
    /// Parses `op=weight[,op=weight…]`; the reason is a sentence for the user.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut weights: Vec<(Op, u32)> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (op, weight) = parse_entry(part)?;
            if weights.iter().any(|(seen, _)| *seen == op) {
                return Err(format!("{} is listed twice", op.name()));
            }
            weights.push((op, weight));
        }
        let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
        if weights.is_empty() {
            return Err("no operations given; expected e.g. get=80,update=20".into());
        }
        if total == 0 {
            return Err("the weights add up to zero".into());
        }
        Ok(Mix { weights, total })
    }

    /// Draws an operation in proportion to the weights.
    pub fn pick(&self, rng: &mut Rng) -> Op {
        let mut ticket = rng.below(self.total);
        for (op, weight) in &self.weights {
            if ticket < u64::from(*weight) {
                return *op;
            }
            ticket -= u64::from(*weight);
        }
        // Unreachable: ticket < total. Fall back to the first operation rather than panic.
        self.weights[0].0
    }

    /// Whether some operation with a non-zero weight addresses preloaded keys.
    pub fn needs_keys(&self) -> bool {
        self.weights.iter().any(|(op, w)| *w > 0 && op.needs_key())
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (op, weight)) in self.weights.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{}={weight}", op.name())?;
        }
        Ok(())
    }
}

fn parse_entry(part: &str) -> Result<(Op, u32), String> {
    let (name, weight) = part
        .split_once('=')
        .ok_or_else(|| format!("{part:?} is not op=weight"))?;
    let name = name.trim().to_ascii_lowercase();
    let op = Op::from_name(&name)
        .ok_or_else(|| format!("unknown operation {name:?}; known: get, update, create, delete"))?;
    let weight = weight
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("weight of {name} must be a whole number ≥ 0, got {weight:?}"))?;
    Ok((op, weight))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_parses_into_weights_and_prints_canonically() {
        let mix = Mix::parse(" get=80, UPDATE=20 ").unwrap();
        assert_eq!(mix.weights, vec![(Op::Get, 80), (Op::Update, 20)]);
        assert_eq!(mix.to_string(), "get=80,update=20");
        assert!(mix.needs_keys());
    }

    #[test]
    fn unknown_operations_are_refused_by_name() {
        let err = Mix::parse("get=1,scan=2").unwrap_err();
        assert!(err.contains("unknown operation \"scan\""), "{err}");
    }

    #[test]
    fn a_zero_total_or_empty_mix_is_refused() {
        assert!(Mix::parse("get=0,update=0").unwrap_err().contains("zero"));
        assert!(Mix::parse("").unwrap_err().contains("no operations"));
    }

    #[test]
    fn bad_numbers_and_shapes_are_refused() {
        for bad in [
            "get=",
            "get=-1",
            "get=1.5",
            "get=x",
            "get",
            "get=99999999999",
        ] {
            assert!(Mix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_operation_listed_twice_is_refused() {
        assert!(Mix::parse("get=1,get=2").unwrap_err().contains("twice"));
    }

    #[test]
    fn picks_follow_the_weights_and_zero_weights_are_never_drawn() {
        let mix = Mix::parse("get=75,update=25,delete=0").unwrap();
        let mut rng = Rng::new(1);
        let updates = (0..100_000)
            .map(|_| mix.pick(&mut rng))
            .inspect(|op| assert_ne!(*op, Op::Delete))
            .filter(|op| *op == Op::Update)
            .count();
        assert!((24_000..26_000).contains(&updates), "{updates}");
    }

    #[test]
    fn a_create_only_mix_needs_no_keys() {
        assert!(!Mix::parse("create=1,get=0").unwrap().needs_keys());
    }
}
