//! The gateway's SMS sender capacity and the warning before a run that offers
//! more SMS than it carries.
//!
//! A gateway sends SMS to a country with a sender pool from that pool's
//! short codes, each paced at its own rate (US: 4 short codes at 100/s, 400
//! messages/s together); a country without a pool gets the carriers' own
//! senders. Messages offered beyond that wait for a free sender: the codes
//! arrive late, and a run measures the queue, not the gateway. The gateway
//! exports what its configuration allows as `watchword_senders` and
//! `watchword_sender_capacity_per_second` (labels `pool` = country, or
//! `carrier`; `channel="sms"`); [`read`] takes them from its metrics
//! endpoint and [`warnings`] compares them with the run's offered SMS rate.
//!
//! This module must never stop a run: an unreadable endpoint is said once by
//! the caller, and a run goes on without the check.

use crate::mix::{Mix, Scenario};
use std::time::Duration;

/// Whose senders a set is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A country's sender pool (ISO 3166 alpha-2, upper case).
    Pool(String),
    /// A carrier's own senders (SMS to countries without a pool).
    Carrier(String),
}

/// One set of SMS senders as the gateway reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct SenderSet {
    /// The pool's country or the carrier.
    pub owner: Owner,
    /// Senders in the set.
    pub senders: u64,
    /// Messages a second the set carries together; `None`: unlimited.
    pub per_second: Option<f64>,
}

/// The SMS sender sets in a Prometheus text scrape (empty when the gateway
/// exports none: one older than these gauges).
pub fn parse(scrape: &str) -> Vec<SenderSet> {
    let mut sets: Vec<SenderSet> = Vec::new();
    for line in scrape.lines() {
        let (metric, is_capacity) =
            if let Some(rest) = line.strip_prefix("watchword_sender_capacity_per_second{") {
                (rest, true)
            } else if let Some(rest) = line.strip_prefix("watchword_senders{") {
                (rest, false)
            } else {
                continue;
            };
        let Some((labels, value)) = metric.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let labels = parse_labels(labels);
        let get = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if get("channel").as_deref() != Some("sms") {
            continue;
        }
        let owner = match (get("pool"), get("carrier")) {
            (Some(p), _) => Owner::Pool(p.to_ascii_uppercase()),
            (None, Some(c)) => Owner::Carrier(c),
            _ => continue,
        };
        let i = match sets.iter().position(|s| s.owner == owner) {
            Some(i) => i,
            None => {
                sets.push(SenderSet {
                    owner,
                    senders: 0,
                    per_second: None,
                });
                sets.len() - 1
            }
        };
        if is_capacity {
            sets[i].per_second = Some(value);
        } else {
            sets[i].senders = value as u64;
        }
    }
    sets
}

/// `name="value",...` with Prometheus escapes (`\"`, `\\`, `\n`).
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, e)) => value.push(e),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((name.trim_start_matches(',').trim().to_owned(), value));
        rest = &after[end..];
    }
    out
}

/// Reads the sender sets from the gateway's metrics endpoint (`http://...`),
/// within 3 s.
pub async fn read(url: &str) -> anyhow::Result<Vec<SenderSet>> {
    let (status, body) = tokio::time::timeout(Duration::from_secs(3), crate::http::get(url))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 3 s"))??;
    anyhow::ensure!(status == 200, "HTTP {status}");
    Ok(parse(&body))
}

/// The scenarios of `mix` that send one SMS each (to the run's phone
/// numbers), with the rate each is offered at when the mix starts `rate`
/// scenarios a second.
pub fn sms_offered(mix: &Mix, rate: f64) -> Vec<(Scenario, f64)> {
    let total: u64 = mix.entries().iter().map(|(_, w)| u64::from(*w)).sum();
    mix.entries()
        .iter()
        .filter(|(s, _)| matches!(s, Scenario::Flow | Scenario::Issue | Scenario::Resend))
        .map(|(s, w)| (*s, rate * f64::from(*w) / total.max(1) as f64))
        .collect()
}

fn per(n: f64) -> String {
    format!("{n:.0}/s")
}

/// What a run offering `offered` SMS a second to numbers of `country`
/// (`prefix`, e.g. `+1`) should know about the gateway's `sets`, one
/// sentence each: the offered rate over what the senders carry, and the
/// `pool` challenges issued before the run (0: none) when they take the
/// senders a second or more. Empty when the senders keep up, or when the
/// gateway's limit is unknown or unlimited.
pub fn warnings(
    sets: &[SenderSet],
    country: &str,
    prefix: &str,
    offered: &[(Scenario, f64)],
    pool: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    let total: f64 = offered.iter().map(|(_, r)| r).sum();
    let country = country.to_ascii_uppercase();
    // What carries SMS to the country, and its limit.
    let (carrier, limit) = match sets
        .iter()
        .find(|s| s.owner == Owner::Pool(country.clone()))
    {
        Some(p) => {
            let Some(cap) = p.per_second else {
                return out;
            };
            let each = if p.senders > 0 {
                format!(
                    " ({} short codes x {})",
                    p.senders,
                    per(cap / p.senders as f64)
                )
            } else {
                String::new()
            };
            (
                format!("the gateway's {country} sender pool"),
                (cap, format!("carries {cap:.0} messages/s{each}")),
            )
        }
        None => {
            let carriers: Vec<&SenderSet> = sets
                .iter()
                .filter(|s| matches!(s.owner, Owner::Carrier(_)))
                .collect();
            if carriers.is_empty() || carriers.iter().any(|c| c.per_second.is_none()) {
                return out;
            }
            let cap: f64 = carriers.iter().filter_map(|c| c.per_second).sum();
            let each: Vec<String> = carriers
                .iter()
                .map(|c| {
                    let Owner::Carrier(name) = &c.owner else {
                        unreachable!("filtered")
                    };
                    let rate = c.per_second.unwrap_or(0.0) / c.senders.max(1) as f64;
                    format!("{name} {} senders x {}", c.senders, per(rate))
                })
                .collect();
            (
                format!("the gateway has no {country} sender pool; its carriers' own senders"),
                (
                    cap,
                    format!(
                        "carry at most {cap:.0} messages/s together ({})",
                        each.join(", ")
                    ),
                ),
            )
        }
    };
    let (cap, carries) = limit;
    if total > cap {
        let what = match offered {
            [(Scenario::Flow, r)] => format!("offered {r:.0} flows/s of SMS to {prefix}"),
            _ => format!(
                "offered {total:.0} SMS/s to {prefix} ({})",
                offered
                    .iter()
                    .map(|(s, r)| format!("{s} {}", per(*r)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        out.push(format!(
            "{what}; {carrier} {carries}: deliveries will queue (the backlog grows by {:.0} \
             messages a second and the codes arrive later and later)",
            total - cap
        ));
    }
    if pool > 0 && cap > 0.0 && pool as f64 / cap >= 1.0 {
        out.push(format!(
            "the {pool} challenges issued before the run (--pool) send {pool} SMS to {prefix} \
             first: {} s of sending for {carrier} before the first code of the run",
            format_args!("{:.1}", pool as f64 / cap)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "\
# HELP watchword_senders Senders.
# TYPE watchword_senders gauge
watchword_senders{pool=\"US\",channel=\"sms\"} 4
watchword_senders{pool=\"CA\",channel=\"sms\"} 2
watchword_senders{carrier=\"sim-primary\",channel=\"sms\"} 2
watchword_senders{carrier=\"sim \\\"b\\\"\",channel=\"sms\"} 2
# TYPE watchword_sender_capacity_per_second gauge
watchword_sender_capacity_per_second{pool=\"US\",channel=\"sms\"} 400
watchword_sender_capacity_per_second{pool=\"CA\",channel=\"sms\"} 200
watchword_sender_capacity_per_second{carrier=\"sim-primary\",channel=\"sms\"} 2
watchword_sender_capacity_per_second{carrier=\"sim \\\"b\\\"\",channel=\"sms\"} 2
watchword_senders_other{pool=\"US\",channel=\"sms\"} 9
watchword_connections 3
";

    #[test]
    fn the_scrape_gives_each_pool_and_carrier() {
        let sets = parse(SCRAPE);
        assert_eq!(sets.len(), 4, "{sets:?}");
        assert_eq!(
            sets[0],
            SenderSet {
                owner: Owner::Pool("US".into()),
                senders: 4,
                per_second: Some(400.0)
            }
        );
        assert_eq!(sets[3].owner, Owner::Carrier("sim \"b\"".into()));
        assert_eq!(sets[3].per_second, Some(2.0));
        // A pool without a capacity series is unlimited.
        let unlimited = parse("watchword_senders{pool=\"US\",channel=\"sms\"} 4\n");
        assert_eq!(unlimited[0].per_second, None);
        assert!(parse("watchword_connections 3\n").is_empty());
    }

    #[test]
    fn the_sms_share_of_a_mix() {
        let mix: Mix = "flow=80,wrong=10,resend=5,unknown=5".parse().unwrap();
        assert_eq!(
            sms_offered(&mix, 500.0),
            [(Scenario::Flow, 400.0), (Scenario::Resend, 25.0)]
        );
        assert!(sms_offered(&Mix::single(Scenario::Ping), 500.0).is_empty());
    }

    #[test]
    fn a_rate_over_the_pool_names_the_limit() {
        let sets = parse(SCRAPE);
        let flows = sms_offered(&Mix::single(Scenario::Flow), 500.0);
        assert_eq!(
            warnings(&sets, "US", "+1", &flows, 0),
            [
                "offered 500 flows/s of SMS to +1; the gateway's US sender pool carries 400 \
              messages/s (4 short codes x 100/s): deliveries will queue (the backlog grows by \
              100 messages a second and the codes arrive later and later)"
            ]
        );
        // Within the pool's rate: nothing to say.
        let within = sms_offered(&Mix::single(Scenario::Flow), 400.0);
        assert!(warnings(&sets, "US", "+1", &within, 0).is_empty());
        // A mix lists what sends SMS; the pool issued before the run is said
        // when it holds the senders a second or more.
        let mix: Mix = "flow=80,wrong=10,resend=5,unknown=5".parse().unwrap();
        let w = warnings(&sets, "US", "+1", &sms_offered(&mix, 500.0), 1_000);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with(
                "offered 425 SMS/s to +1 (flow 400/s, resend 25/s); the gateway's US sender \
                 pool carries 400 messages/s"
            ),
            "{w:?}"
        );
        assert_eq!(
            w[1],
            "the 1000 challenges issued before the run (--pool) send 1000 SMS to +1 first: 2.5 s \
             of sending for the gateway's US sender pool before the first code of the run"
        );
        assert!(warnings(&sets, "US", "+1", &within, 100).is_empty());
    }

    #[test]
    fn without_a_pool_the_carriers_senders_are_the_limit() {
        let sets: Vec<SenderSet> = parse(SCRAPE)
            .into_iter()
            .filter(|s| s.owner != Owner::Pool("US".into()))
            .collect();
        let flows = sms_offered(&Mix::single(Scenario::Flow), 10.0);
        let w = warnings(&sets, "US", "+1", &flows, 0);
        assert_eq!(
            w,
            [
                "offered 10 flows/s of SMS to +1; the gateway has no US sender pool; its \
              carriers' own senders carry at most 4 messages/s together (sim-primary 2 senders \
              x 1/s, sim \"b\" 2 senders x 1/s): deliveries will queue (the backlog grows by 6 \
              messages a second and the codes arrive later and later)"
            ]
        );
        // Unknown or unlimited: no warning.
        assert!(warnings(&[], "US", "+1", &flows, 0).is_empty());
        let unlimited = parse("watchword_senders{pool=\"US\",channel=\"sms\"} 4\n");
        assert!(warnings(&unlimited, "US", "+1", &flows, 10_000).is_empty());
    }
}
