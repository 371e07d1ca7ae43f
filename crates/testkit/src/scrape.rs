//! Reading a Prometheus text exposition, to check that metrics moved.

use std::collections::{BTreeMap, BTreeSet};

/// One scrape of `/metrics`: every sample with its labels.
#[derive(Debug, Default)]
pub struct Scrape {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Parses the text format (comments and blank lines skipped).
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_sample)
            .collect();
        Self { samples }
    }

    /// The sum of the samples named `name` whose labels include `labels`
    /// (0 when there are none).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Every metric family named, with histogram and summary suffixes
    /// (`_bucket`, `_sum`, `_count`) taken off.
    pub fn families(&self) -> BTreeSet<String> {
        self.samples
            .iter()
            .map(|(n, _, _)| family(n).to_owned())
            .collect()
    }
}

/// A sample name's metric family.
pub fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)),
        None => (series, BTreeMap::new()),
    };
    Some((name.to_owned(), labels, value))
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_counters_histograms_and_labels() {
        let scrape = Scrape::parse(
            "# HELP x help\n# TYPE x counter\n\
             natter_errors_total{code=\"bad_request\"} 2\n\
             natter_errors_total{code=\"not_found\"} 1\n\
             natter_lat_seconds_bucket{path=\"live\",le=\"0.1\"} 3\n\
             natter_lat_seconds_count{path=\"live\"} 4\n\
             natter_open 7\n",
        );
        assert_eq!(scrape.value("natter_errors_total", &[]), 3.0);
        assert_eq!(
            scrape.value("natter_errors_total", &[("code", "not_found")]),
            1.0
        );
        assert_eq!(
            scrape.value("natter_lat_seconds_bucket", &[("le", "0.1")]),
            3.0
        );
        assert_eq!(scrape.value("natter_open", &[]), 7.0);
        assert_eq!(scrape.value("natter_missing", &[]), 0.0);
        assert!(scrape.families().contains("natter_lat_seconds"));
    }
}
