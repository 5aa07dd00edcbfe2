//! MySQL values to JSON, one column at a time.
//!
//! The mapping is documented on the parent module ([`crate::source`]).

use base64::Engine as _;
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::{Column, Value};
use serde_json::{Number, Value as Json};

/// MySQL's character set number for binary strings.
const BINARY_CHARSET: u16 = 63;

/// How the bytes of one column are read; decided once per result set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnKind {
    /// Text in UTF-8 (repaired when it is not).
    Text,
    /// Binary data: base64.
    Binary,
    /// JSON text: parsed.
    Json,
    /// DECIMAL: the exact decimal string.
    Decimal,
    /// BIT: an unsigned number.
    Bit,
    /// DATE: the date only.
    Date,
    /// DATETIME or TIMESTAMP, with the declared fractional digits (0 to 6).
    DateTime {
        /// Fractional second digits the column declares (`None`: not declared).
        decimals: Option<u8>,
    },
    /// TIME, with the declared fractional digits.
    Time {
        /// Fractional second digits the column declares (`None`: not declared).
        decimals: Option<u8>,
    },
}

/// How to read a column; `json` says the column is known to hold JSON (MariaDB's JSON columns
/// are LONGTEXT on the wire, told apart by their `json_valid` check constraint).
pub(crate) fn column_kind(column: &Column, json: bool) -> ColumnKind {
    let decimals = match column.decimals() {
        d @ 0..=6 => Some(d),
        _ => None,
    };
    match column.column_type() {
        ColumnType::MYSQL_TYPE_JSON => ColumnKind::Json,
        ColumnType::MYSQL_TYPE_NEWDECIMAL | ColumnType::MYSQL_TYPE_DECIMAL => ColumnKind::Decimal,
        ColumnType::MYSQL_TYPE_BIT => ColumnKind::Bit,
        ColumnType::MYSQL_TYPE_DATE | ColumnType::MYSQL_TYPE_NEWDATE => ColumnKind::Date,
        ColumnType::MYSQL_TYPE_DATETIME
        | ColumnType::MYSQL_TYPE_DATETIME2
        | ColumnType::MYSQL_TYPE_TIMESTAMP
        | ColumnType::MYSQL_TYPE_TIMESTAMP2 => ColumnKind::DateTime { decimals },
        ColumnType::MYSQL_TYPE_TIME | ColumnType::MYSQL_TYPE_TIME2 => ColumnKind::Time { decimals },
        _ if json => ColumnKind::Json,
        _ if is_binary(column) => ColumnKind::Binary,
        _ => ColumnKind::Text,
    }
}

/// A binary string column: character set 63. The BINARY flag alone is not enough: MySQL also
/// sets it on text columns with a `_bin` collation.
fn is_binary(column: &Column) -> bool {
    column.character_set() == BINARY_CHARSET
        && !column
            .flags()
            .intersects(ColumnFlags::ENUM_FLAG | ColumnFlags::SET_FLAG)
}

/// The outcome of converting one value: the JSON, and whether invalid UTF-8 was repaired.
#[derive(Debug, PartialEq)]
pub(crate) struct Converted {
    /// The JSON value.
    pub(crate) json: Json,
    /// Invalid UTF-8 was replaced with U+FFFD.
    pub(crate) repaired: bool,
}

impl Converted {
    fn clean(json: Json) -> Self {
        Self {
            json,
            repaired: false,
        }
    }
}

/// Converts one value of a column of the given kind.
pub(crate) fn to_json(value: &Value, kind: ColumnKind) -> Converted {
    match value {
        Value::NULL => Converted::clean(Json::Null),
        Value::Int(i) => Converted::clean(Json::from(*i)),
        Value::UInt(u) => Converted::clean(Json::from(*u)),
        Value::Float(f) => Converted::clean(float_to_json(*f)),
        Value::Double(d) => Converted::clean(Number::from_f64(*d).map_or(Json::Null, Json::Number)),
        Value::Date(year, month, day, hour, minute, second, micros) => {
            Converted::clean(date_to_json(
                kind,
                [*year, u16::from(*month), u16::from(*day)],
                [*hour, *minute, *second],
                *micros,
            ))
        }
        Value::Time(negative, days, hours, minutes, seconds, micros) => {
            let decimals = match kind {
                ColumnKind::Time { decimals } | ColumnKind::DateTime { decimals } => decimals,
                _ => None,
            };
            let total_hours = u64::from(*days) * 24 + u64::from(*hours);
            let sign = if *negative { "-" } else { "" };
            let fraction = fraction(*micros, decimals);
            Converted::clean(Json::String(format!(
                "{sign}{total_hours:02}:{minutes:02}:{seconds:02}{fraction}"
            )))
        }
        Value::Bytes(bytes) => bytes_to_json(bytes, kind),
    }
}

/// A FLOAT printed in its shortest `f32` form, then read as the JSON number with that text, so
/// `1.1` stays `1.1` instead of the `f64` widening `1.100000023841858`.
fn float_to_json(f: f32) -> Json {
    f.to_string()
        .parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map_or(Json::Null, Json::Number)
}

fn date_to_json(
    kind: ColumnKind,
    [year, month, day]: [u16; 3],
    [hour, minute, second]: [u8; 3],
    micros: u32,
) -> Json {
    if year == 0 && month == 0 && day == 0 {
        return Json::Null;
    }
    let date = format!("{year:04}-{month:02}-{day:02}");
    match kind {
        ColumnKind::Date => Json::String(date),
        ColumnKind::DateTime { decimals } | ColumnKind::Time { decimals } => {
            let fraction = fraction(micros, decimals);
            Json::String(format!(
                "{date}T{hour:02}:{minute:02}:{second:02}{fraction}"
            ))
        }
        // A temporal value in a column of another type (an expression): full precision.
        _ => {
            let fraction = fraction(micros, None);
            Json::String(format!(
                "{date}T{hour:02}:{minute:02}:{second:02}{fraction}"
            ))
        }
    }
}

/// The fractional seconds: as many digits as the column declares, or six digits when the
/// column declares nothing and the value has a fraction.
fn fraction(micros: u32, decimals: Option<u8>) -> String {
    match decimals {
        Some(0) => String::new(),
        Some(digits) => {
            let digits = u32::from(digits.min(6));
            let scaled = micros / 10u32.pow(6 - digits);
            format!(".{scaled:0width$}", width = digits as usize)
        }
        None if micros == 0 => String::new(),
        None => format!(".{micros:06}"),
    }
}

fn bytes_to_json(bytes: &[u8], kind: ColumnKind) -> Converted {
    match kind {
        ColumnKind::Binary => Converted::clean(Json::String(
            base64::engine::general_purpose::STANDARD.encode(bytes),
        )),
        ColumnKind::Bit => {
            // BIT(M) is at most 64 bits: 8 bytes, big-endian.
            let n = bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            Converted::clean(Json::from(n))
        }
        ColumnKind::Json => match serde_json::from_slice::<Json>(bytes) {
            Ok(json) => Converted::clean(json),
            // Not JSON after all (a column without the check, a corrupt row): keep the text.
            Err(_) => text(bytes),
        },
        ColumnKind::Decimal
        | ColumnKind::Text
        | ColumnKind::Date
        | ColumnKind::DateTime { .. }
        | ColumnKind::Time { .. } => text(bytes),
    }
}

fn text(bytes: &[u8]) -> Converted {
    match std::str::from_utf8(bytes) {
        Ok(s) => Converted::clean(Json::String(s.to_owned())),
        Err(_) => Converted {
            json: Json::String(String::from_utf8_lossy(bytes).into_owned()),
            repaired: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn col(t: ColumnType, charset: u16, decimals: u8) -> Column {
        Column::new(t)
            .with_character_set(charset)
            .with_decimals(decimals)
    }

    fn convert(value: Value, column: &Column) -> Json {
        let c = to_json(&value, column_kind(column, false));
        assert!(!c.repaired);
        c.json
    }

    #[test]
    fn integers_are_exact_numbers_at_both_ends_of_their_range() {
        let c = col(ColumnType::MYSQL_TYPE_LONGLONG, BINARY_CHARSET, 0);
        assert_eq!(
            convert(Value::UInt(u64::MAX), &c),
            json!(18_446_744_073_709_551_615u64)
        );
        assert_eq!(
            convert(Value::Int(i64::MIN), &c),
            json!(-9_223_372_036_854_775_808i64)
        );
        assert_eq!(
            convert(Value::UInt(u64::MAX), &c).to_string(),
            "18446744073709551615"
        );
    }

    #[test]
    fn floats_keep_their_shortest_form_and_doubles_stay_doubles() {
        let c = col(ColumnType::MYSQL_TYPE_FLOAT, BINARY_CHARSET, 31);
        assert_eq!(convert(Value::Float(1.1), &c).to_string(), "1.1");
        assert_eq!(convert(Value::Double(2.5e-300), &c), json!(2.5e-300));
        assert_eq!(convert(Value::Double(f64::NAN), &c), Json::Null);
    }

    #[test]
    fn decimals_are_exact_strings() {
        let c = col(ColumnType::MYSQL_TYPE_NEWDECIMAL, BINARY_CHARSET, 10);
        let v = Value::Bytes(b"12345678901234567890.1234567890".to_vec());
        assert_eq!(convert(v, &c), json!("12345678901234567890.1234567890"));
    }

    #[test]
    fn dates_datetimes_and_times_are_iso_strings_with_declared_precision() {
        let date = col(ColumnType::MYSQL_TYPE_DATE, BINARY_CHARSET, 0);
        assert_eq!(
            convert(Value::Date(2024, 5, 1, 0, 0, 0, 0), &date),
            json!("2024-05-01")
        );
        let dt0 = col(ColumnType::MYSQL_TYPE_DATETIME, BINARY_CHARSET, 0);
        assert_eq!(
            convert(Value::Date(2024, 5, 1, 10, 0, 0, 0), &dt0),
            json!("2024-05-01T10:00:00")
        );
        let dt6 = col(ColumnType::MYSQL_TYPE_DATETIME, BINARY_CHARSET, 6);
        assert_eq!(
            convert(Value::Date(2024, 5, 1, 10, 0, 0, 123), &dt6),
            json!("2024-05-01T10:00:00.000123")
        );
        assert_eq!(
            convert(Value::Date(2024, 5, 1, 10, 0, 0, 0), &dt6),
            json!("2024-05-01T10:00:00.000000")
        );
        let dt3 = col(ColumnType::MYSQL_TYPE_TIMESTAMP, BINARY_CHARSET, 3);
        assert_eq!(
            convert(Value::Date(2024, 5, 1, 10, 0, 0, 500_000), &dt3),
            json!("2024-05-01T10:00:00.500")
        );
        assert_eq!(convert(Value::Date(0, 0, 0, 0, 0, 0, 0), &dt0), Json::Null);
        let t0 = col(ColumnType::MYSQL_TYPE_TIME, BINARY_CHARSET, 0);
        assert_eq!(
            convert(Value::Time(true, 34, 22, 59, 59, 0), &t0),
            json!("-838:59:59")
        );
        assert_eq!(
            convert(Value::Time(false, 0, 1, 2, 3, 0), &t0),
            json!("01:02:03")
        );
        let t6 = col(ColumnType::MYSQL_TYPE_TIME, BINARY_CHARSET, 6);
        assert_eq!(
            convert(Value::Time(false, 1, 1, 0, 0, 5), &t6),
            json!("25:00:00.000005")
        );
    }

    #[test]
    fn binary_is_base64_text_is_a_string_and_enum_is_text() {
        let blob = col(ColumnType::MYSQL_TYPE_BLOB, BINARY_CHARSET, 0);
        assert_eq!(convert(Value::Bytes(vec![0, 255, 1]), &blob), json!("AP8B"));
        let text = col(ColumnType::MYSQL_TYPE_VAR_STRING, 45, 0);
        assert_eq!(
            convert(Value::Bytes("é中".as_bytes().to_vec()), &text),
            json!("é中")
        );
        let en = col(ColumnType::MYSQL_TYPE_STRING, BINARY_CHARSET, 0)
            .with_flags(ColumnFlags::ENUM_FLAG);
        assert_eq!(convert(Value::Bytes(b"red".to_vec()), &en), json!("red"));
    }

    #[test]
    fn bit_is_a_big_endian_number() {
        let bit = col(ColumnType::MYSQL_TYPE_BIT, BINARY_CHARSET, 0);
        assert_eq!(convert(Value::Bytes(vec![0x01, 0x02]), &bit), json!(258));
        assert_eq!(convert(Value::Bytes(vec![0xFF; 8]), &bit), json!(u64::MAX));
    }

    #[test]
    fn json_columns_are_parsed_and_broken_json_stays_text() {
        let mysql_json = col(ColumnType::MYSQL_TYPE_JSON, BINARY_CHARSET, 0);
        assert_eq!(
            convert(Value::Bytes(br#"{"a":[1,2]}"#.to_vec()), &mysql_json),
            json!({"a": [1, 2]})
        );
        let mariadb_json = col(ColumnType::MYSQL_TYPE_BLOB, 46, 0);
        let kind = column_kind(&mariadb_json, true);
        assert_eq!(
            to_json(&Value::Bytes(b"[true]".to_vec()), kind).json,
            json!([true])
        );
        assert_eq!(
            to_json(&Value::Bytes(b"{not".to_vec()), kind).json,
            json!("{not")
        );
    }

    #[test]
    fn invalid_utf8_text_is_repaired_and_reported() {
        let text = col(ColumnType::MYSQL_TYPE_VAR_STRING, 8, 0);
        let c = to_json(
            &Value::Bytes(vec![b'A', 0xE9, b'B', 0xC3]),
            column_kind(&text, false),
        );
        assert!(c.repaired);
        assert_eq!(c.json, json!("A\u{FFFD}B\u{FFFD}"));
    }
}
