//! Reading the JSON log records of `turnstile`: fields, transitions, stops, timestamps.

use serde_json::Value as Json;

/// One transition as logged: `(from, to, event)`.
pub type Transition = (String, String, String);

/// A string field of a log record.
pub fn field<'a>(j: &'a Json, key: &str) -> &'a str {
    j.get(key).and_then(Json::as_str).unwrap_or("")
}

/// True for a transition record of `machine`.
pub fn is_transition(j: &Json, machine: &str) -> bool {
    field(j, "target") == "turnstile::transition" && field(j, "machine") == machine
}

/// The transitions `machine` logged, in order.
pub fn transitions(records: &[Json], machine: &str) -> Vec<Transition> {
    records
        .iter()
        .filter(|j| is_transition(j, machine))
        .map(|j| {
            (
                field(j, "from").to_owned(),
                field(j, "to").to_owned(),
                field(j, "event").to_owned(),
            )
        })
        .collect()
}

/// Builds an expected transition list from `(from, to, event)` triples.
pub fn seq(items: &[(&str, &str, &str)]) -> Vec<Transition> {
    items
        .iter()
        .map(|(f, t, e)| ((*f).to_owned(), (*t).to_owned(), (*e).to_owned()))
        .collect()
}

/// The messages of records with `target`, for `machine`.
pub fn messages(records: &[Json], target: &str, machine: &str) -> Vec<String> {
    records
        .iter()
        .filter(|j| field(j, "target") == target && field(j, "machine") == machine)
        .map(|j| field(j, "message").to_owned())
        .collect()
}

/// The state `machine` stopped in and why (`FinalState`, `Shutdown`), from its
/// `machine stopped` record.
pub fn stopped(records: &[Json], machine: &str) -> Option<(String, String)> {
    records
        .iter()
        .find(|j| {
            field(j, "target") == "turnstile::machine"
                && field(j, "machine") == machine
                && field(j, "message") == "machine stopped"
        })
        .map(|j| (field(j, "state").to_owned(), field(j, "reason").to_owned()))
}

/// Seconds since the Unix epoch of a log record's RFC 3339 UTC `timestamp`
/// (`2026-11-26T14:27:53.091875Z`).
pub fn timestamp(j: &Json) -> f64 {
    let ts = field(j, "timestamp");
    parse_rfc3339_utc(ts).unwrap_or_else(|| panic!("bad timestamp `{ts}` in {j}"))
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac]Z` into seconds since the Unix epoch.
pub fn parse_rfc3339_utc(ts: &str) -> Option<f64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let min: i64 = t.next()?.parse().ok()?;
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    #[allow(clippy::cast_precision_loss)]
    let whole = (days * 86_400 + h * 3600 + min * 60) as f64;
    Some(whole + sec)
}
