//! `ALLOWED_ORIGINS` entries, checked at start: each must be exactly what a
//! browser sends in `Origin` (`scheme://host[:port]`), and never `*`.

/// Parses one allowed origin, or says why it is not one. Used as the clap
/// value parser, so a bad entry stops the gateway before it starts.
pub fn parse(text: &str) -> Result<String, String> {
    // Browsers send the scheme and host in lower case.
    let origin = text.trim().to_ascii_lowercase();
    if origin.contains('*') {
        return Err(format!(
            "`{origin}`: a wildcard origin cannot be used, because the gateway \
             accepts credentials (bearer tokens) from browsers; list each origin"
        ));
    }
    let (scheme, rest) = origin
        .split_once("://")
        .ok_or_else(|| format!("`{origin}` is not an origin: expected scheme://host[:port]"))?;
    if !matches!(scheme, "http" | "https") {
        return Err(format!("`{origin}`: the scheme must be http or https"));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(format!(
            "`{origin}`: an origin has no path, query or fragment (browsers send \
             scheme://host[:port], with no trailing `/`)"
        ));
    }
    if rest.contains('@') {
        return Err(format!("`{origin}`: an origin has no user or password"));
    }
    let (host, port) = split_port(rest)?;
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
    {
        return Err(format!("`{origin}`: `{host}` is not a host name"));
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(format!("`{origin}`: `{port}` is not a port"));
    }
    Ok(origin)
}

/// `host` and `port` of `host[:port]`, IPv6 literals (`[::1]:8000`) included.
fn split_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(end) = authority.find(']') {
        let (host, tail) = authority.split_at(end + 1);
        return match tail {
            "" => Ok((host, None)),
            _ => tail
                .strip_prefix(':')
                .map(|port| (host, Some(port)))
                .ok_or_else(|| format!("`{authority}` is not host[:port]")),
        };
    }
    Ok(match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn accepts_what_browsers_send() {
        for origin in [
            "http://localhost:5173",
            "https://chat.example.com",
            "http://127.0.0.1:8000",
            "http://[::1]:8000",
        ] {
            assert_eq!(parse(origin).as_deref(), Ok(origin));
        }
        assert_eq!(
            parse(" HTTPS://Chat.Example.com ").as_deref(),
            Ok("https://chat.example.com")
        );
    }

    #[test]
    fn refuses_wildcards_paths_and_non_origins() {
        for bad in [
            "*",
            "https://*.example.com",
            "https://example.com/",
            "https://example.com/app",
            "example.com",
            "ftp://example.com",
            "https://user:pw@example.com",
            "https://example.com:port",
            "https://",
            "https://exa mple.com",
        ] {
            assert!(parse(bad).is_err(), "{bad} was accepted");
        }
        assert!(parse("*").unwrap_err().contains("wildcard"));
    }
}
