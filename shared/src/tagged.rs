//! `kind = "…"` tables: how the config of a pluggable part (a partitioner, an aggregation
//! strategy, …) is written in a scenario, read back, and sent over the wire.
//!
//! Such a config is an enum with one variant per kind, each variant holding that kind's own
//! config struct, which is `#[serde(deny_unknown_fields)]` and has no `kind` field:
//!
//! ```toml
//! [partition]
//! kind = "dirichlet"
//! alpha = 0.5
//! ```
//!
//! is `PartitionConfig::Dirichlet(DirichletConfig { alpha: 0.5 })`. `tagged_serde!` writes
//! the serde impls of such an enum from its list of kinds; serde's own `#[serde(tag = "kind")]`
//! is not used because it lets unknown keys through for kinds without settings and needs a
//! self-describing format (bincode, the wire format, is not one).
//!
//! - Reading TOML or JSON: `kind` picks the variant and the rest of the table is read by that
//!   variant's struct, so an unknown key is an error that names it. A `null` value counts as an
//!   absent key (a run's `scenario.json` may hold some). A bare name, `strategy = "fedavg"`, is
//!   that kind with every setting at its default.
//! - Writing TOML or JSON: the table `{ kind = "…", <the settings> }`, or the bare name when
//!   the kind has no settings (so `federation.strategy` stays `"fedavg"` in `scenario.json`).
//! - Other formats (bincode): the pair (kind name, settings struct).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, SerializeMap, SerializeTuple, Serializer};
use serde::Serialize;

/// The key of a table that names its kind.
pub const KIND_KEY: &str = "kind";

/// A config enum whose variants are the kinds of one pluggable part, each holding that kind's
/// config struct. Implemented by `tagged_serde!`, which also implements `Serialize` and
/// `Deserialize` through [`serialize`] and [`deserialize`].
pub trait Tagged: Sized {
    /// Every kind, as written after `kind =`, in the variants' order.
    const KINDS: &'static [&'static str];

    /// This value's kind (one of [`Self::KINDS`]).
    fn kind(&self) -> &'static str;

    /// The value of kind `kind`, its settings read from `settings` (the table without its
    /// `kind` key). Errors on an unknown kind ([`unknown_kind`]) or settings that do not fit.
    fn deserialize_kind<'de, D: Deserializer<'de>>(
        kind: &str,
        settings: D,
    ) -> Result<Self, D::Error>;

    /// Serialises this value's settings (its variant's struct).
    fn serialize_settings<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error>;
}

/// The error for a kind that `T` does not have, listing the ones it has.
pub fn unknown_kind<E: de::Error>(kind: &str, kinds: &[&str]) -> E {
    let known: Vec<String> = kinds.iter().map(|k| format!("`{k}`")).collect();
    E::custom(format_args!(
        "unknown kind `{kind}` (known: {})",
        known.join(", ")
    ))
}

/// Serialises `value` as its table (or bare name) in human-readable formats and as the pair
/// (kind, settings) in the others; see the [module docs](self).
pub fn serialize<T: Tagged, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    if !s.is_human_readable() {
        let mut pair = s.serialize_tuple(2)?;
        pair.serialize_element(value.kind())?;
        pair.serialize_element(&Settings(value))?;
        return pair.end();
    }
    let settings = match toml::Value::try_from(Settings(value)) {
        Ok(toml::Value::Table(t)) => t,
        Ok(_) => {
            return Err(ser::Error::custom(format_args!(
                "the settings of kind `{}` are not a table",
                value.kind()
            )))
        }
        Err(e) => return Err(ser::Error::custom(e)),
    };
    if settings.is_empty() {
        return s.serialize_str(value.kind());
    }
    let mut map = s.serialize_map(Some(settings.len() + 1))?;
    map.serialize_entry(KIND_KEY, value.kind())?;
    for (key, v) in &settings {
        map.serialize_entry(key, v)?;
    }
    map.end()
}

/// Deserialises a `T` written by [`serialize`] (or by hand in a scenario file).
pub fn deserialize<'de, T: Tagged, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    if d.is_human_readable() {
        d.deserialize_any(TableVisitor(PhantomData))
    } else {
        d.deserialize_tuple(2, PairVisitor(PhantomData))
    }
}

/// A value's settings, serialised by [`Tagged::serialize_settings`].
struct Settings<'a, T>(&'a T);

impl<T: Tagged> Serialize for Settings<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_settings(s)
    }
}

/// Reads the table `{ kind = "…", … }` or a bare kind name.
struct TableVisitor<T>(PhantomData<T>);

impl<'de, T: Tagged> Visitor<'de> for TableVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "a table with `{KIND_KEY} = ` one of {:?}, or one of those names",
            T::KINDS
        )
    }

    fn visit_str<E: de::Error>(self, kind: &str) -> Result<T, E> {
        from_settings(kind, toml::Table::new())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut kind = None;
        let mut settings = toml::Table::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == KIND_KEY {
                kind = Some(map.next_value::<String>()?);
            } else if let Some(v) = map.next_value::<Option<toml::Value>>()? {
                settings.insert(key, v);
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field(KIND_KEY))?;
        from_settings(&kind, settings)
    }
}

/// The value of kind `kind` from the rest of its table. A key the kind does not have is
/// refused naming it, with a hint: the usual way to get one is `--set table.kind=…` on a table
/// whose old kind had settings (they stay), where replacing the whole table is what works.
fn from_settings<T: Tagged, E: de::Error>(kind: &str, settings: toml::Table) -> Result<T, E> {
    T::deserialize_kind(kind, toml::Value::Table(settings)).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.trim_end();
        if msg.starts_with("unknown field") {
            E::custom(format_args!(
                "{msg} (not a setting of kind `{kind}`; to change a table's kind with --set, replace the whole table: --set '<key>={{kind=\"{kind}\"}}')"
            ))
        } else {
            E::custom(msg)
        }
    })
}

/// Reads the pair (kind, settings) of the non-human-readable formats.
struct PairVisitor<T>(PhantomData<T>);

impl<'de, T: Tagged> Visitor<'de> for PairVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a kind among {:?} and its settings", T::KINDS)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        let kind: String = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        seq.next_element_seed(KindSeed(kind, PhantomData))?
            .ok_or_else(|| de::Error::invalid_length(1, &self))
    }
}

/// Deserialises the settings of a known kind.
struct KindSeed<T>(String, PhantomData<T>);

impl<'de, T: Tagged> DeserializeSeed<'de> for KindSeed<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        T::deserialize_kind(&self.0, d)
    }
}

/// Implements [`Tagged`], `Serialize` and `Deserialize` for a config enum from its kinds:
///
/// ```ignore
/// tagged_serde!(PartitionConfig {
///     "iid" => Iid(IidConfig),
///     "dirichlet" => Dirichlet(DirichletConfig),
/// });
/// ```
///
/// Every variant is a newtype of its kind's config struct; adding a kind is one line here.
macro_rules! tagged_serde {
    ($enum:ident { $($kind:literal => $variant:ident($config:ty)),+ $(,)? }) => {
        impl $crate::tagged::Tagged for $enum {
            const KINDS: &'static [&'static str] = &[$($kind),+];

            fn kind(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $kind,)+
                }
            }

            fn deserialize_kind<'de, D: ::serde::Deserializer<'de>>(
                kind: &str,
                settings: D,
            ) -> Result<Self, D::Error> {
                match kind {
                    $($kind => <$config as ::serde::Deserialize>::deserialize(settings)
                        .map(Self::$variant),)+
                    _ => Err($crate::tagged::unknown_kind(kind, Self::KINDS)),
                }
            }

            fn serialize_settings<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(Self::$variant(c) => ::serde::Serialize::serialize(c, s),)+
                }
            }
        }

        impl ::serde::Serialize for $enum {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $crate::tagged::serialize(self, s)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $enum {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::tagged::deserialize(d)
            }
        }
    };
}
pub(crate) use tagged_serde;

/// Checks, for every kind of `T`, that a table of that kind with a key no kind has is refused
/// with an error naming the key (that the kind's struct is `deny_unknown_fields`).
#[cfg(test)]
pub(crate) fn assert_unknown_keys_are_refused<T: Tagged + serde::de::DeserializeOwned>() {
    for kind in T::KINDS {
        let text = format!("{KIND_KEY} = \"{kind}\"\nsurely_not_a_key = 1\n");
        match toml::from_str::<T>(&text) {
            Ok(_) => panic!("kind `{kind}` accepted an unknown key"),
            Err(e) => assert!(e.to_string().contains("surely_not_a_key"), "{kind}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pluggable part with a kind without settings and one with a required and an optional
    /// setting.
    #[derive(Clone, Debug, PartialEq)]
    enum Part {
        Plain(PlainConfig),
        Tuned(TunedConfig),
    }

    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PlainConfig {}

    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TunedConfig {
        rate: f64,
        #[serde(default)]
        steps: Option<u32>,
    }

    tagged_serde!(Part {
        "plain" => Plain(PlainConfig),
        "tuned" => Tuned(TunedConfig),
    });

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Holder {
        part: Part,
    }

    fn tuned(rate: f64, steps: Option<u32>) -> Part {
        Part::Tuned(TunedConfig { rate, steps })
    }

    #[test]
    fn tables_and_bare_names_read_back() {
        let h: Holder = toml::from_str("[part]\nkind = \"tuned\"\nrate = 2\n").unwrap();
        assert_eq!(h.part, tuned(2.0, None));
        let h: Holder = toml::from_str("part = { kind = \"plain\" }").unwrap();
        assert_eq!(h.part, Part::Plain(PlainConfig {}));
        let h: Holder = toml::from_str("part = \"plain\"").unwrap();
        assert_eq!(h.part, Part::Plain(PlainConfig {}));
        // through a toml::Value tree, as Scenario reads its files
        let v: toml::Value =
            toml::from_str("[part]\nkind = \"tuned\"\nrate = 0.5\nsteps = 3\n").unwrap();
        assert_eq!(v.try_into::<Holder>().unwrap().part, tuned(0.5, Some(3)));
        // null is an absent key
        let p: Part = serde_json::from_str(r#"{"kind":"tuned","rate":1.5,"steps":null}"#).unwrap();
        assert_eq!(p, tuned(1.5, None));
    }

    #[test]
    fn written_as_a_table_or_the_bare_name_and_read_back() {
        for part in [
            Part::Plain(PlainConfig {}),
            tuned(0.25, None),
            tuned(3.0, Some(7)),
        ] {
            let json = serde_json::to_string(&part).unwrap();
            assert_eq!(serde_json::from_str::<Part>(&json).unwrap(), part, "{json}");
            let text = toml::to_string(&Holder { part: part.clone() }).unwrap();
            assert_eq!(
                toml::from_str::<Holder>(&text).unwrap().part,
                part,
                "{text}"
            );
        }
        assert_eq!(
            serde_json::to_string(&Part::Plain(PlainConfig {})).unwrap(),
            r#""plain""#
        );
        assert_eq!(
            serde_json::to_string(&tuned(0.25, None)).unwrap(),
            r#"{"kind":"tuned","rate":0.25}"#
        );
    }

    #[test]
    fn bincode_carries_kind_and_settings() {
        let cfg = bincode::config::standard();
        for part in [Part::Plain(PlainConfig {}), tuned(0.25, Some(9))] {
            let bytes = bincode::serde::encode_to_vec(&part, cfg).unwrap();
            let (back, used): (Part, usize) =
                bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
            assert_eq!((back, used), (part, bytes.len()));
        }
    }

    #[test]
    fn unknown_kinds_unknown_keys_and_missing_settings_are_errors() {
        assert_unknown_keys_are_refused::<Part>();
        let e = toml::from_str::<Holder>("part = { kind = \"fancy\" }").unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown kind `fancy` (known: `plain`, `tuned`)"),
            "{e}"
        );
        let e = toml::from_str::<Holder>("part = { rate = 1.0 }").unwrap_err();
        assert!(e.to_string().contains("missing field `kind`"), "{e}");
        let e = toml::from_str::<Holder>("part = { kind = \"tuned\" }").unwrap_err();
        assert!(e.to_string().contains("missing field `rate`"), "{e}");
        let e = toml::from_str::<Holder>("part = \"tuned\"").unwrap_err();
        assert!(e.to_string().contains("missing field `rate`"), "{e}");
        let e = toml::from_str::<Holder>("part = { kind = \"plain\", rate = 1.0 }").unwrap_err();
        assert!(e.to_string().contains("rate"), "{e}");
        // a key left over from another kind (`--set part.kind=plain` on a tuned table) says
        // how to switch kinds
        assert!(
            e.to_string().contains("not a setting of kind `plain`")
                && e.to_string().contains("replace the whole table"),
            "{e}"
        );
        assert!(toml::from_str::<Holder>("part = 3").is_err());
    }
}
