//! The checks every update passes before a strategy aggregates it: the names and shapes of
//! the weights the round started from, a value count that fits each shape, finite values,
//! and at least one training sample. A failed check is a typed [`Refusal`].

use std::collections::BTreeMap;
use std::fmt;

use fedssl_shared::weights::WeightSet;

/// Why an update was refused (its `Display` is the reason `rounds.jsonl` records, after
/// `update refused: `).
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// The update reports 0 training samples.
    NoSamples,
    /// A tensor of the global model is missing.
    MissingTensor {
        /// Its name.
        name: String,
    },
    /// A tensor has another shape than the global model's.
    WrongShape {
        /// Its name.
        name: String,
        /// The update's shape.
        shape: Vec<usize>,
        /// The global model's shape.
        expected: Vec<usize>,
    },
    /// A tensor holds a number of values its shape does not make.
    WrongLength {
        /// Its name.
        name: String,
        /// Values it holds.
        values: usize,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// The update holds a tensor the global model does not have.
    UnexpectedTensor {
        /// Its name.
        name: String,
    },
    /// A value is NaN or infinite.
    NonFinite {
        /// The tensor, the first (by name) holding one.
        name: String,
        /// The value.
        value: f32,
        /// Its index in the tensor's row-major values.
        index: usize,
    },
    /// The reported sample count n_k is not the size of the shard the coordinator knows
    /// the client holds ([`crate::server::samples`]).
    WrongSampleCount {
        /// What the client reported.
        claimed: u64,
        /// The size of its shard.
        shard: u64,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoSamples => write!(f, "update reports 0 training samples"),
            Refusal::MissingTensor { name } => write!(f, "update lacks tensor `{name}`"),
            Refusal::WrongShape {
                name,
                shape,
                expected,
            } => write!(
                f,
                "tensor `{name}` has shape {shape:?}, expected {expected:?}"
            ),
            Refusal::WrongLength {
                name,
                values,
                shape,
            } => write!(
                f,
                "tensor `{name}` holds {values} values for shape {shape:?}"
            ),
            Refusal::UnexpectedTensor { name } => {
                write!(f, "update holds unexpected tensor `{name}`")
            }
            Refusal::NonFinite { name, value, index } => write!(
                f,
                "tensor `{name}` holds a non-finite value ({value}) at index {index}"
            ),
            Refusal::WrongSampleCount { claimed, shard } => write!(
                f,
                "update claims {claimed} training samples, but the client's shard holds {shard}"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// The names and shapes an update must have: those of the weights a round started from.
#[derive(Clone, Debug)]
pub struct UpdateLayout {
    shapes: BTreeMap<String, Vec<usize>>,
}

impl UpdateLayout {
    /// The layout of `global`.
    pub fn of(global: &WeightSet) -> Self {
        Self {
            shapes: global
                .tensors
                .iter()
                .map(|(n, t)| (n.clone(), t.shape.clone()))
                .collect(),
        }
    }

    /// Checks an update trained on `num_samples` images, in this order: samples, then each
    /// tensor of the layout by name (present, shape, value count), then tensors the layout
    /// lacks, then finite values; the first failure is the refusal.
    pub fn check(&self, update: &WeightSet, num_samples: u64) -> Result<(), Refusal> {
        self.check_tensors(
            num_samples,
            |name| {
                update
                    .tensors
                    .get(name)
                    .map(|t| (t.shape.as_slice(), t.data.len()))
            },
            update.tensors.keys().map(String::as_str),
        )?;
        for (name, t) in &update.tensors {
            check_finite(name, 0, &t.data)?;
        }
        Ok(())
    }

    /// [`Self::check`]'s checks before the values': `num_samples`, then each tensor of the
    /// layout by name (`tensor(name)` gives the update's shape and value count of it, or
    /// `None` where it lacks it), then the first of the update's tensor `names` the layout
    /// lacks. For an update whose values are not in memory (check them with
    /// [`check_finite`], tensor by tensor in name order).
    pub fn check_tensors<'a>(
        &self,
        num_samples: u64,
        tensor: impl Fn(&str) -> Option<(&'a [usize], usize)>,
        mut names: impl Iterator<Item = &'a str>,
    ) -> Result<(), Refusal> {
        if num_samples == 0 {
            return Err(Refusal::NoSamples);
        }
        for (name, expected) in &self.shapes {
            match tensor(name) {
                None => return Err(Refusal::MissingTensor { name: name.clone() }),
                Some((shape, _)) if shape != expected.as_slice() => {
                    return Err(Refusal::WrongShape {
                        name: name.clone(),
                        shape: shape.to_vec(),
                        expected: expected.clone(),
                    })
                }
                Some((shape, values)) if values != shape.iter().product::<usize>() => {
                    return Err(Refusal::WrongLength {
                        name: name.clone(),
                        values,
                        shape: shape.to_vec(),
                    })
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = names.find(|k| !self.shapes.contains_key(*k)) {
            return Err(Refusal::UnexpectedTensor {
                name: extra.to_string(),
            });
        }
        Ok(())
    }
}

/// Refuses the values `data` of tensor `name`, its values from row-major index `start` on,
/// when one is NaN or infinite (the first one is named, with its index in the tensor).
pub fn check_finite(name: &str, start: usize, data: &[f32]) -> Result<(), Refusal> {
    match data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Refusal::NonFinite {
            name: name.to_string(),
            value: data[i],
            index: start + i,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedssl_shared::weights::TensorData;

    fn ws(names: &[(&str, Vec<usize>, Vec<f32>)]) -> WeightSet {
        let mut w = WeightSet::default();
        for (n, shape, data) in names {
            w.tensors.insert(
                n.to_string(),
                TensorData {
                    shape: shape.clone(),
                    data: data.clone(),
                },
            );
        }
        w
    }

    #[test]
    fn the_first_failed_check_is_the_refusal_and_says_which_tensor() {
        let global = ws(&[("a", vec![2], vec![0.0; 2]), ("b", vec![1], vec![0.0])]);
        let layout = UpdateLayout::of(&global);
        assert_eq!(layout.check(&global, 1), Ok(()));
        assert_eq!(layout.check(&global, 0), Err(Refusal::NoSamples));
        let e = layout
            .check(&ws(&[("b", vec![1], vec![0.0])]), 1)
            .unwrap_err();
        assert_eq!(e.to_string(), "update lacks tensor `a`");
        let e = layout
            .check(
                &ws(&[("a", vec![1, 2], vec![0.0; 2]), ("b", vec![1], vec![0.0])]),
                1,
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "tensor `a` has shape [1, 2], expected [2]");
        let e = layout
            .check(
                &ws(&[("a", vec![2], vec![0.0; 3]), ("b", vec![1], vec![0.0])]),
                1,
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "tensor `a` holds 3 values for shape [2]");
        let mut extra = global.clone();
        extra.tensors.insert(
            "c".into(),
            TensorData {
                shape: vec![],
                data: vec![0.0],
            },
        );
        assert_eq!(
            layout.check(&extra, 1).unwrap_err().to_string(),
            "update holds unexpected tensor `c`"
        );
        let nan = ws(&[
            ("a", vec![2], vec![0.0, f32::INFINITY]),
            ("b", vec![1], vec![f32::NAN]),
        ]);
        assert_eq!(
            layout.check(&nan, 1).unwrap_err().to_string(),
            "tensor `a` holds a non-finite value (inf) at index 1"
        );
        // the message is the one the weights' own finiteness check gives
        assert_eq!(
            nan.check_finite().unwrap_err().to_string(),
            layout.check(&nan, 1).unwrap_err().to_string()
        );
    }
}
