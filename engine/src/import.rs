//! Hardware tokens from files: the CSV layouts (the Entra/Azure one, with a
//! header `upn,serial number,secret key,time interval,manufacturer,model`,
//! and a minimal `serial,secret,period`). Each row gives a token or the
//! reason it was skipped; a bad row never stops the rest.
//!
//! Pure parsing: nothing is stored here. A secret never appears in a skip
//! reason, an error or a log.

use crate::oath::{Algorithm, Kind, Params, Secret, base32_decode, validate_secret};

/// Most rows one file may hold.
pub const MAX_ROWS: usize = 200_000;

/// A token read from a file.
#[derive(Debug)]
pub struct ImportedToken {
    /// Its serial.
    pub serial: String,
    /// The user it goes to (`upn`), if the file says.
    pub subject: Option<String>,
    /// TOTP or HOTP.
    pub kind: Kind,
    /// Its parameters.
    pub params: Params,
    /// Its secret (never logged).
    pub secret: Secret,
    /// HOTP: the next counter expected (0 unless the file says).
    pub counter: u64,
}

/// One row's outcome.
#[derive(Debug)]
pub enum Row {
    /// A token to add.
    Token(ImportedToken),
    /// Not imported, and why (never the secret).
    Skipped {
        /// The row's serial ("" when it has none).
        serial: String,
        /// Why.
        reason: String,
    },
}

/// The columns a CSV file names in its header.
struct Layout {
    upn: Option<usize>,
    serial: usize,
    secret: usize,
    period: Option<usize>,
}

fn layout(header: &str) -> Result<Layout, String> {
    let cols: Vec<String> = header
        .split(',')
        .map(|c| c.trim().trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect();
    let at = |names: &[&str]| cols.iter().position(|c| names.contains(&c.as_str()));
    let serial = at(&["serial number", "serial"]);
    let secret = at(&["secret key", "secret"]);
    match (serial, secret) {
        (Some(serial), Some(secret)) => Ok(Layout {
            upn: at(&["upn"]),
            serial,
            secret,
            period: at(&["time interval", "period"]),
        }),
        _ => Err(
            "the header names no serial and secret columns (expected `upn,serial number,secret key,time interval,manufacturer,model` or `serial,secret,period`)"
                .into(),
        ),
    }
}

/// Parses a CSV file of TOTP tokens (SHA-1, 6 digits, the period given or
/// 30 s). Errors only for a file that is not such a CSV at all.
pub fn parse_csv(text: &str) -> Result<Vec<Row>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or("the file is empty")?;
    let layout = layout(header)?;
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        if i >= MAX_ROWS {
            return Err(format!("more than {MAX_ROWS} rows: split the file"));
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let cell = |c: usize| cells.get(c).copied().unwrap_or("");
        let serial = cell(layout.serial).to_owned();
        let skip = |reason: &str| Row::Skipped {
            serial: serial.clone(),
            reason: reason.to_owned(),
        };
        if serial.is_empty() {
            rows.push(skip("no serial"));
            continue;
        }
        let secret = match base32_decode(cell(layout.secret)) {
            Ok(s) if validate_secret(&s).is_ok() => Secret::new(s),
            Ok(_) => {
                rows.push(skip("bad secret (must be 10 to 512 bytes)"));
                continue;
            }
            Err(_) => {
                rows.push(skip("bad secret (not base32)"));
                continue;
            }
        };
        let period = match layout.period.map(cell).filter(|p| !p.is_empty()) {
            None => 30,
            Some(p) => match p.parse::<u32>() {
                Ok(p @ (30 | 60)) => p,
                _ => {
                    rows.push(skip("unsupported time interval (30 or 60)"));
                    continue;
                }
            },
        };
        let subject = layout
            .upn
            .map(cell)
            .filter(|u| !u.is_empty())
            .map(str::to_owned);
        rows.push(Row::Token(ImportedToken {
            serial,
            subject,
            kind: Kind::Totp,
            params: Params {
                algorithm: Algorithm::Sha1,
                digits: 6,
                period,
            },
            secret,
            counter: 0,
        }));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entra_layout_imports_with_its_example_secret() {
        // Microsoft's sample row: a 26-character secret whose trailing bits
        // make no whole byte.
        let csv = "upn,serial number,secret key,time interval,manufacturer,model\n\
                   Helga@contoso.com,1234567,2234567abcdef2234567abcdef,60,Contoso,HardwareKey\n";
        let rows = parse_csv(csv).unwrap();
        let Row::Token(t) = &rows[0] else {
            panic!("{rows:?}")
        };
        assert_eq!(
            (t.serial.as_str(), t.subject.as_deref()),
            ("1234567", Some("Helga@contoso.com"))
        );
        assert_eq!(t.params.period, 60);
        assert_eq!(t.secret.expose().len(), 16);
    }

    #[test]
    fn every_bad_row_says_why_and_the_rest_goes_on() {
        let csv = "serial,secret,period\n\
                   A1,GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ,30\n\
                   A2,not-base32!,30\n\
                   A3,GEZDGNBV,30\n\
                   A4,GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ,45\n\
                   ,GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ,30\n\
                   A5,gezdgnbvgy3tqojqgezdgnbvgy3tqojq,\n";
        let rows = parse_csv(csv).unwrap();
        let summary: Vec<String> = rows
            .iter()
            .map(|r| match r {
                Row::Token(t) => format!("ok {}", t.serial),
                Row::Skipped { serial, reason } => format!("skip {serial}: {reason}"),
            })
            .collect();
        assert_eq!(
            summary,
            [
                "ok A1",
                "skip A2: bad secret (not base32)",
                "skip A3: bad secret (must be 10 to 512 bytes)",
                "skip A4: unsupported time interval (30 or 60)",
                "skip : no serial",
                "ok A5",
            ]
        );
        for r in &rows {
            assert!(!format!("{r:?}").contains("GEZDGNBV"), "a secret in {r:?}");
        }
    }

    #[test]
    fn a_file_without_the_columns_is_refused_whole() {
        assert!(parse_csv("").is_err());
        assert!(parse_csv("name,value\nx,y\n").is_err());
    }
}
