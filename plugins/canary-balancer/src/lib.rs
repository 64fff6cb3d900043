//! `canary-balancer`: splits an upstream's traffic between groups of backends by weight, and
//! keeps each client on its side of the split.
//!
//! A group is the set of backends with the same `zone` in the upstream (`group_by = "zone"`),
//! e.g. `stable` and `canary`, and `weights = { stable = 90, canary = 10 }` says how new
//! clients are shared out. The decision needs two hooks that run at different times, and
//! select-backend cannot write the request context, so the same `[[plugin]]` is used in two
//! places:
//!
//! - **in the route's `plugins`**: `on_request` picks the group. A pin header
//!   (`x-canary-group: canary`) or pin cookie (`canary_group=canary`) naming a known group wins;
//!   otherwise a weighted random draw decides. The group goes to the request context as
//!   [`GROUP_KEY`] and how it was chosen as [`SOURCE_KEY`]. `on_response` then sets the pin
//!   cookie when the group was drawn, so the client's next requests stay on the same side.
//! - **as the upstream's `balance = { plugin = "NAME" }`**: `select_backend` reads the group from
//!   the context and picks among the offered (healthy) backends of that zone, at random in
//!   proportion to their weights. With no healthy backend in the group it logs a warning and
//!   leaves the choice to the upstream's round robin over every healthy backend; with no group
//!   in the context (the plugin is missing from the route) it does the same, silently.
//!
//! Start at [`CanaryBalancer`]; the README has a complete config.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_sdk::check::is_header_name;
use sluice_sdk::prelude::*;

/// The request context key holding the group chosen by `on_request`.
pub const GROUP_KEY: &str = "canary.group";

/// The request context key saying how the group was chosen: `header`, `cookie` or `draw`.
pub const SOURCE_KEY: &str = "canary.source";

/// The plugin, made from its config; see the crate docs for how its hooks cooperate.
#[derive(Debug)]
pub struct CanaryBalancer {
    /// (group, weight), sorted by group name; the weights add up to more than 0.
    groups: Vec<(String, u32)>,
    /// The request header that pins a group (lower-case); `None`: disabled.
    pin_header: Option<String>,
    /// The cookie that pins a group; `None`: disabled.
    pin_cookie: Option<String>,
}

/// The `[plugin.config]` table as written; see the README for each key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_group_by")]
    group_by: String,
    weights: BTreeMap<String, u32>,
    #[serde(default = "default_pin_header")]
    pin_header: String,
    #[serde(default = "default_pin_cookie")]
    pin_cookie: String,
}

fn default_group_by() -> String {
    "zone".into()
}

fn default_pin_header() -> String {
    "x-canary-group".into()
}

fn default_pin_cookie() -> String {
    "canary_group".into()
}

impl Plugin for CanaryBalancer {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.json()?;
        if settings.group_by != "zone" {
            return Err(format!(
                "canary-balancer: group_by = {:?} is not supported; the only option is \"zone\"",
                settings.group_by
            ));
        }
        if settings.weights.is_empty() {
            return Err("canary-balancer: weights is empty; give each group (zone) a weight, \
                        e.g. weights = { stable = 90, canary = 10 }"
                .into());
        }
        if let Some(bad) = settings.weights.keys().find(|group| !is_group_name(group)) {
            return Err(format!(
                "canary-balancer: group {bad:?} in weights must be made of letters, digits, '-', '_' and '.'"
            ));
        }
        if settings.weights.values().all(|&weight| weight == 0) {
            return Err("canary-balancer: every weight is 0; at least one group must get traffic".into());
        }
        let pin_header = Some(settings.pin_header).filter(|h| !h.is_empty());
        if let Some(header) = &pin_header
            && !is_header_name(header)
        {
            return Err(format!("canary-balancer: pin_header {header:?} is not a valid header name"));
        }
        let pin_cookie = Some(settings.pin_cookie).filter(|c| !c.is_empty());
        if let Some(cookie) = &pin_cookie
            && !is_header_name(cookie)
        {
            return Err(format!("canary-balancer: pin_cookie {cookie:?} is not a valid cookie name"));
        }
        Ok(CanaryBalancer {
            groups: settings.weights.into_iter().collect(),
            pin_header: pin_header.map(|h| h.to_ascii_lowercase()),
            pin_cookie,
        })
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        let (group, source) = if let Some(group) = self.pinned_by_header(req) {
            (group, "header")
        } else if let Some(group) = self.pinned_by_cookie(req) {
            (group, "cookie")
        } else {
            (self.draw(), "draw")
        };
        req.set_context(GROUP_KEY, group);
        req.set_context(SOURCE_KEY, source);
        Action::Continue
    }

    fn on_response(&mut self, resp: &mut Response) -> ResponseAction {
        let Some(cookie) = &self.pin_cookie else {
            return ResponseAction::Continue;
        };
        if resp.context(SOURCE_KEY) == Some("draw")
            && let Some(group) = resp.context(GROUP_KEY).and_then(|group| self.known(group))
        {
            resp.append_header("set-cookie", format!("{cookie}={group}; Path=/; HttpOnly; SameSite=Lax"));
        }
        ResponseAction::Continue
    }

    fn select_backend(&mut self, req: &Request, backends: &[Backend]) -> Selection {
        let Some(group) = req.context(GROUP_KEY) else {
            return Selection::Default; // the plugin is not in the route's plugins
        };
        let members: Vec<usize> = (0..backends.len()).filter(|&i| backends[i].zone == group).collect();
        let weights = members.iter().map(|&i| u64::from(backends[i].weight.max(1)));
        match pick_weighted(weights) {
            Some(chosen) => Selection::Backend(members[chosen]),
            None => {
                host::warn(&format!(
                    "no healthy backend in canary group {group:?}; falling back to any healthy backend"
                ));
                Selection::Default
            }
        }
    }
}

impl CanaryBalancer {
    /// The configured group named `name`, borrowed from the config.
    fn known(&self, name: &str) -> Option<&str> {
        self.groups.iter().map(|(group, _)| group.as_str()).find(|group| *group == name)
    }

    /// The group named by the pin header, if it is a known one.
    fn pinned_by_header(&self, req: &Request) -> Option<&str> {
        let header = self.pin_header.as_deref()?;
        self.known(req.header_str(header)?.trim())
    }

    /// The group named by the pin cookie, if it is a known one. Every `Cookie` header counts
    /// (HTTP/2 may split them); the first cookie of that name naming a known group wins.
    fn pinned_by_cookie(&self, req: &Request) -> Option<&str> {
        let name = self.pin_cookie.as_deref()?;
        req.headers("cookie")
            .flat_map(|header| header.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(key, _)| key.trim() == name)
            .find_map(|(_, value)| self.known(value.trim().trim_matches('"')))
    }

    /// A group drawn at random in proportion to the weights.
    fn draw(&self) -> &str {
        let weights = self.groups.iter().map(|(_, weight)| u64::from(*weight));
        // init made sure some weight is above 0, so a pick always exists.
        let chosen = pick_weighted(weights).unwrap_or(0);
        self.groups.get(chosen).map_or("", |(group, _)| group.as_str())
    }
}

/// An index drawn at random with probability proportional to its weight; `None` when the
/// weights add up to 0 (or there are none). Asks the host for randomness only when there is a
/// choice to make.
fn pick_weighted(weights: impl Iterator<Item = u64> + Clone) -> Option<usize> {
    let total: u64 = weights.clone().fold(0, u64::saturating_add);
    if total == 0 {
        return None;
    }
    let mut ticket = if weights.clone().filter(|&w| w > 0).count() > 1 { random_u64() % total } else { 0 };
    for (index, weight) in weights.enumerate() {
        if ticket < weight {
            return Some(index);
        }
        ticket -= weight;
    }
    None
}

/// 64 random bits from the host (the modulo bias over weights summing to far less is negligible).
fn random_u64() -> u64 {
    host::random_bytes(8).try_into().map_or(0, u64::from_le_bytes)
}

/// Whether `name` can be a group: it goes into a cookie value and is compared with zones.
fn is_group_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

export_plugin!(CanaryBalancer);

#[cfg(test)]
mod tests;
