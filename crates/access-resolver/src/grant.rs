//! Grants: which actions an engine may take on which secrets.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use vault_types::{SecretAddress, validate_identifier};

/// Something an engine can ask the vault to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Store (create or replace) a secret.
    Store,
    /// Read a secret's access token.
    Read,
    /// Delete a secret.
    Delete,
    /// Administer: read the usage log and other vault-wide facts about the
    /// secrets the grant covers.
    Admin,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 4] = [Action::Store, Action::Read, Action::Delete, Action::Admin];

    /// The stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::Read => "read",
            Self::Delete => "delete",
            Self::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Store => 1,
            Self::Read => 2,
            Self::Delete => 4,
            Self::Admin => 8,
        }
    }
}

impl FromStr for Action {
    type Err = GrantParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim() {
            "store" => Self::Store,
            "read" => Self::Read,
            "delete" => Self::Delete,
            "admin" => Self::Admin,
            other => return Err(GrantParseError(format!("unknown action {other:?}"))),
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Matches one identifier: anything (`*`), a prefix (`pf_*`) or an exact name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*`: every value.
    Any,
    /// `abc*`: values starting with `abc`.
    Prefix(String),
    /// `abc`: exactly `abc`.
    Exact(String),
}

impl Pattern {
    fn parse(field: &'static str, s: &str, lower: bool) -> Result<Self, GrantParseError> {
        let s = s.trim();
        let s = if lower {
            s.to_ascii_lowercase()
        } else {
            s.to_owned()
        };
        if s == "*" {
            return Ok(Self::Any);
        }
        let (body, prefix) = match s.strip_suffix('*') {
            Some(body) => (body.to_owned(), true),
            None => (s, false),
        };
        validate_identifier(field, &body).map_err(|e| GrantParseError(e.to_string()))?;
        Ok(if prefix {
            Self::Prefix(body)
        } else {
            Self::Exact(body)
        })
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Exact(e) => value == e,
        }
    }
}

/// A set of actions on the secrets whose environment, project and platform
/// each match one of the grant's patterns.
///
/// Compact text form: `ACTIONS:ENVIRONMENTS:PROJECTS:PLATFORMS`, each a
/// comma list, `*` for any, a trailing `*` for a prefix; for example
/// `read:prod:*:*` or `store,read:dev,staging:pf_*:slack`. Platform
/// patterns are case-insensitive, like platform names. Patterns in the
/// compact form cannot contain `:`; use [`GrantSpec::Table`] for those,
/// and for a scope restriction.
///
/// Grants only allow: an engine may do what at least one of its grants
/// allows, and nothing else. A grant's scope restriction narrows that grant
/// alone; it never widens another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    actions: u8,
    environments: Vec<Pattern>,
    projects: Vec<Pattern>,
    platforms: Vec<Pattern>,
    scopes: Option<Vec<String>>,
}

/// What an engine asks to do: the input of an authorization decision.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    /// The action.
    pub action: Action,
    /// The secret it is about.
    pub address: &'a SecretAddress,
    /// The scopes a read requires (`?scopes=`); empty for other actions.
    pub scopes: &'a [String],
}

impl<'a> AccessRequest<'a> {
    /// A request without required scopes.
    pub fn new(action: Action, address: &'a SecretAddress) -> Self {
        Self {
            action,
            address,
            scopes: &[],
        }
    }
}

/// Why a grant did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid grant: {0}")]
pub struct GrantParseError(String);

fn patterns(
    field: &'static str,
    items: &[String],
    lower: bool,
) -> Result<Vec<Pattern>, GrantParseError> {
    if items.is_empty() {
        return Err(GrantParseError(format!("no {field} given")));
    }
    items
        .iter()
        .map(|s| Pattern::parse(field, s, lower))
        .collect()
}

impl Grant {
    /// Builds a grant from its parts.
    pub fn new(
        actions: &[String],
        environments: &[String],
        projects: &[String],
        platforms: &[String],
    ) -> Result<Self, GrantParseError> {
        if actions.is_empty() {
            return Err(GrantParseError("no actions given".into()));
        }
        let mut bits = 0;
        for a in actions {
            if a.trim() == "*" {
                bits |= Action::ALL.iter().fold(0, |b, a| b | a.bit());
            } else {
                bits |= a.parse::<Action>()?.bit();
            }
        }
        Ok(Self {
            actions: bits,
            environments: patterns("environment", environments, false)?,
            projects: patterns("project", projects, false)?,
            platforms: patterns("platform", platforms, true)?,
            scopes: None,
        })
    }

    /// Restricts reads through this grant to tokens required with scopes
    /// from `scopes`: a read must name its required scopes (`?scopes=`),
    /// and each must be in the list.
    pub fn with_scopes(mut self, scopes: Vec<String>) -> Result<Self, GrantParseError> {
        if scopes.is_empty()
            || scopes
                .iter()
                .any(|s| s.is_empty() || s.contains(char::is_whitespace))
        {
            return Err(GrantParseError(
                "scopes must be a non-empty list of scopes without spaces".into(),
            ));
        }
        self.scopes = Some(scopes);
        Ok(self)
    }

    /// Whether this grant includes `action` anywhere.
    pub fn has_action(&self, action: Action) -> bool {
        self.actions & action.bit() != 0
    }

    /// Whether this grant includes `action` on every environment, project
    /// and platform (`admin:*:*:*`): what vault-wide requests need.
    pub fn covers_everything(&self, action: Action) -> bool {
        let any = |patterns: &[Pattern]| patterns.contains(&Pattern::Any);
        self.has_action(action)
            && any(&self.environments)
            && any(&self.projects)
            && any(&self.platforms)
    }

    /// Whether this grant allows `action` on `address`.
    pub fn allows(&self, action: Action, address: &SecretAddress) -> bool {
        self.permits(&AccessRequest::new(action, address))
    }

    /// Whether this grant allows `request`.
    pub fn permits(&self, request: &AccessRequest<'_>) -> bool {
        let address = request.address;
        let scopes_ok = match (&self.scopes, request.action) {
            (Some(allowed), Action::Read) => {
                !request.scopes.is_empty() && request.scopes.iter().all(|s| allowed.contains(s))
            }
            _ => true,
        };
        self.actions & request.action.bit() != 0
            && self
                .environments
                .iter()
                .any(|p| p.matches(address.environment()))
            && self.projects.iter().any(|p| p.matches(address.project()))
            && self.platforms.iter().any(|p| p.matches(address.platform()))
            && scopes_ok
    }
}

impl FromStr for Grant {
    type Err = GrantParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let [actions, envs, projects, platforms] = parts.as_slice() else {
            return Err(GrantParseError(
                "expected ACTIONS:ENVIRONMENTS:PROJECTS:PLATFORMS".into(),
            ));
        };
        let list = |s: &str| s.split(',').map(str::to_owned).collect::<Vec<_>>();
        Self::new(
            &list(actions),
            &list(envs),
            &list(projects),
            &list(platforms),
        )
    }
}

/// A grant as written in configuration: the compact string or a table.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum GrantSpec {
    /// `"read:prod:*:*"`.
    Compact(String),
    /// `{ actions = ["read"], environments = ["prod"], projects = ["*"], platforms = ["*"] }`,
    /// optionally with `scopes = ["chat:write"]`.
    Table {
        /// Actions.
        actions: Vec<String>,
        /// Environment patterns.
        environments: Vec<String>,
        /// Project patterns.
        projects: Vec<String>,
        /// Platform patterns.
        platforms: Vec<String>,
        /// Scopes reads through this grant may require (all others refused).
        #[serde(default)]
        scopes: Option<Vec<String>>,
    },
}

impl GrantSpec {
    /// Parses the spec into a grant.
    pub fn to_grant(&self) -> Result<Grant, GrantParseError> {
        match self {
            Self::Compact(s) => s.parse(),
            Self::Table {
                actions,
                environments,
                projects,
                platforms,
                scopes,
            } => {
                let grant = Grant::new(actions, environments, projects, platforms)?;
                match scopes {
                    Some(s) => grant.with_scopes(s.clone()),
                    None => Ok(grant),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(env: &str, project: &str, platform: &str) -> SecretAddress {
        SecretAddress::new(env, project, platform).unwrap()
    }

    #[test]
    fn compact_form_parses_and_matches() {
        let g: Grant = "store,read:dev,staging:pf_*:Slack".parse().unwrap();
        assert!(g.allows(Action::Store, &a("dev", "pf_203", "slack")));
        assert!(g.allows(Action::Read, &a("staging", "pf_", "SLACK")));
        assert!(!g.allows(Action::Delete, &a("dev", "pf_203", "slack")));
        assert!(!g.allows(Action::Read, &a("prod", "pf_203", "slack")));
        assert!(!g.allows(Action::Read, &a("dev", "px_203", "slack")));
        assert!(!g.allows(Action::Read, &a("dev", "pf_203", "notion")));
    }

    #[test]
    fn wildcards() {
        let g: Grant = "*:*:*:*".parse().unwrap();
        for action in Action::ALL {
            assert!(g.allows(action, &a("x", "y", "z")));
        }
        let g: Grant = "read:prod:*:*".parse().unwrap();
        assert!(g.allows(Action::Read, &a("prod", "anything", "any")));
        assert!(!g.allows(Action::Read, &a("production", "anything", "any")));
    }

    #[test]
    fn exact_is_not_prefix() {
        let g: Grant = "read:prod:pf_2:slack".parse().unwrap();
        assert!(g.allows(Action::Read, &a("prod", "pf_2", "slack")));
        assert!(!g.allows(Action::Read, &a("prod", "pf_203", "slack")));
    }

    #[test]
    fn bad_grants_are_rejected() {
        for bad in [
            "",
            "read",
            "read:prod:*",
            "read:prod:*:*:extra",
            "write:prod:*:*",
            "read::*:*",
            "read:prod:a b:*",
            "read:prod:*:sl/ack",
            ":prod:*:*",
        ] {
            assert!(bad.parse::<Grant>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn admin_is_an_action_and_star_includes_it() {
        let g: Grant = "admin:prod:*:*".parse().unwrap();
        assert!(g.allows(Action::Admin, &a("prod", "p", "x")));
        assert!(!g.allows(Action::Read, &a("prod", "p", "x")));
        let all: Grant = "*:*:*:*".parse().unwrap();
        assert!(all.allows(Action::Admin, &a("dev", "p", "x")));
    }

    #[test]
    fn only_a_grant_on_every_address_covers_the_vault() {
        for everywhere in [
            "admin:*:*:*",
            "*:*:*:*",
            "read,admin:*:*:*",
            "admin:prod,*:*:*",
        ] {
            let g: Grant = everywhere.parse().unwrap();
            assert!(g.covers_everything(Action::Admin), "{everywhere}");
        }
        for narrower in [
            "admin:prod:*:*",
            "admin:*:pf_1:*",
            "admin:*:*:slack",
            "admin:*:pf_*:*",
            "read:*:*:*",
            "store,delete:*:*:*",
        ] {
            let g: Grant = narrower.parse().unwrap();
            assert!(!g.covers_everything(Action::Admin), "{narrower}");
        }
    }

    #[test]
    fn a_scope_restriction_narrows_its_own_grant_only() {
        let narrow: Grant = "read:prod:*:slack"
            .parse::<Grant>()
            .unwrap()
            .with_scopes(vec!["chat:write".into()])
            .unwrap();
        let addr = a("prod", "p", "slack");
        assert!(
            !narrow.permits(&AccessRequest::new(Action::Read, &addr)),
            "a restricted read must name its scopes"
        );
        let chat = vec!["chat:write".to_string()];
        let admin = vec!["chat:write".to_string(), "admin".to_string()];
        let r = AccessRequest {
            action: Action::Read,
            address: &addr,
            scopes: &chat,
        };
        assert!(narrow.permits(&r));
        let r = AccessRequest {
            action: Action::Read,
            address: &addr,
            scopes: &admin,
        };
        assert!(!narrow.permits(&r));
        // Other actions are not affected by a scope restriction.
        let wide: Grant = "read,store:prod:*:slack"
            .parse::<Grant>()
            .unwrap()
            .with_scopes(vec!["chat:write".into()])
            .unwrap();
        assert!(wide.allows(Action::Store, &addr));
    }

    #[test]
    fn table_form_allows_colons() {
        let spec: GrantSpec = GrantSpec::Table {
            actions: vec!["read".into()],
            environments: vec!["prod".into()],
            projects: vec!["org:pf_*".into()],
            platforms: vec!["*".into()],
            scopes: None,
        };
        let g = spec.to_grant().unwrap();
        assert!(g.allows(Action::Read, &a("prod", "org:pf_1", "slack")));
    }
}
