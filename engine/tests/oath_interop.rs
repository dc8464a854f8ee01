//! Interop with `oathtool` (Debian package `oathtool`, installed by
//! `.ci/run`): codes it computes for random secrets, every algorithm, both
//! lengths, both steps, HOTP and TOTP, verify here. Without `oathtool` the
//! test says what is missing and passes, except in CI (`CI` set), where
//! missing it is a failure.

use std::process::Command;

use rand::Rng;
use watchword_engine::oath::{Algorithm, Params, Secret, Token};

fn oathtool() -> Option<&'static str> {
    let found = Command::new("oathtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("oathtool");
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "oathtool is not installed (apt-get install oathtool); .ci/run installs it"
    );
    eprintln!("SKIPPED: oathtool is not installed (apt-get install oathtool)");
    None
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn codes_from_oathtool_verify() {
    let Some(tool) = oathtool() else { return };
    let mut rng = rand::rng();
    for (alg, flag) in [
        (Algorithm::Sha1, "sha1"),
        (Algorithm::Sha256, "sha256"),
        (Algorithm::Sha512, "sha512"),
    ] {
        for (digits, period) in [(6u8, 30u32), (8, 60)] {
            let bytes: Vec<u8> = (0..rng.random_range(16..64))
                .map(|_| rng.random())
                .collect();
            let secret = Secret::new(bytes.clone());
            let t = Token::new(
                &secret,
                Params {
                    algorithm: alg,
                    digits,
                    period,
                },
            )
            .unwrap();
            let at: u64 = rng.random_range(1_000_000_000..4_000_000_000);
            let out = Command::new(tool)
                .args([
                    &format!("--totp={flag}"),
                    "-d",
                    &digits.to_string(),
                    "-s",
                    &format!("{period}s"),
                    "-N",
                    &format!("@{at}"),
                    &hex(&bytes),
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let code = String::from_utf8(out.stdout).unwrap().trim().to_owned();
            assert!(
                t.verify_totp(code.as_bytes(), at, 0, 0, None).is_some(),
                "TOTP {flag} {digits} digits {period} s"
            );
            let counter: u64 = rng.random_range(0..1_000_000);
            let out = Command::new(tool)
                .args([
                    "--hotp",
                    "-d",
                    &digits.to_string(),
                    "-c",
                    &counter.to_string(),
                    &hex(&bytes),
                ])
                .output()
                .unwrap();
            let code = String::from_utf8(out.stdout).unwrap().trim().to_owned();
            if alg == Algorithm::Sha1 {
                assert_eq!(
                    t.verify_hotp(code.as_bytes(), counter, 1),
                    Some(counter + 1)
                );
            }
        }
    }
}

#[test]
fn a_base32_secret_agrees_with_oathtool() {
    let Some(tool) = oathtool() else { return };
    let b32 = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
    let secret = Secret::new(watchword_engine::oath::base32_decode(b32).unwrap());
    let t = Token::new(
        &secret,
        Params {
            algorithm: Algorithm::Sha1,
            digits: 6,
            period: 30,
        },
    )
    .unwrap();
    let out = Command::new(tool)
        .args(["--totp", "-b", "-N", "@1700000000", b32])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        t.totp(1_700_000_000)
    );
}
