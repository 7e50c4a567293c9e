//! Config errors: each names the field path, the message and, where the parser kept it,
//! the line and column, so `rampart check` prints `FILE:LINE:COL: path: message`.

use std::fmt;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line, 0 when unknown.
    pub line: u64,
    /// 1-based column, 0 when unknown.
    pub column: u64,
    /// Field path such as `routes[0].split[0].backend`; empty for the whole document.
    pub path: String,
    /// What is wrong, naming the offending value.
    pub message: String,
}

impl ConfigError {
    /// The error prefixed with the file name: `FILE:LINE:COL: path: message`.
    pub fn render(&self, file: &str) -> String {
        format!("{file}:{self}")
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: ", self.line, self.column.max(1))?;
        } else {
            f.write_str(" ")?;
        }
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config file, in file order where positions are known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// Each error as `FILE:LINE:COL: path: message`, one a line.
    pub fn render(&self, file: &str) -> String {
        self.0
            .iter()
            .map(|e| e.render(file))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} config error{}", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "; {}", e.to_string().trim_start())?;
        }
        Ok(())
    }
}
