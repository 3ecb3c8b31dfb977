//! What a policy asks for that the agent's hook set cannot see. With `--trouble-hooks` no
//! program runs per packet, so `slow_drain` (a peer acking slowly without making the sender
//! retransmit) and `recv_backlog` (a local reader that stopped) are never classified: a rule
//! acting only on them could never fire, and is refused (before anything is attached, and on
//! SIGHUP); a rule listing them among others is warned about.

use super::{Policy, Rule};
use crate::classify::StallClass;

/// Classes `--trouble-hooks` does not see.
pub const TROUBLE_UNSEEN: [StallClass; 2] = [StallClass::SlowDrain, StallClass::RecvBacklog];

/// How a policy fits `--trouble-hooks`: lines in the loader's `FILE:LINE: ...` form.
#[derive(Debug, Default, PartialEq)]
pub struct HookFit {
    /// Rules that could never fire: the policy is refused.
    pub refused: Vec<String>,
    /// Rules that lose some of their classes.
    pub warnings: Vec<String>,
}

impl HookFit {
    /// The warnings when no rule is refused, else the refusals, one per line.
    pub fn into_result(self) -> Result<Vec<String>, String> {
        if self.refused.is_empty() {
            Ok(self.warnings)
        } else {
            Err(self.refused.join("\n"))
        }
    }
}

fn names(classes: &[StallClass]) -> String {
    classes
        .iter()
        .map(|c| format!("`{}`", c.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Policy {
    /// How this policy fits `--trouble-hooks` (see the module doc).
    pub fn fit_trouble_hooks(&self) -> HookFit {
        let file = self.file_label();
        let at = |r: &Rule| {
            if r.line == 0 {
                file.clone()
            } else {
                format!("{file}:{}", r.line)
            }
        };
        let mut fit = HookFit::default();
        for r in &self.rules {
            let (unseen, seen): (Vec<StallClass>, Vec<StallClass>) =
                r.classes.iter().partition(|c| TROUBLE_UNSEEN.contains(c));
            if unseen.is_empty() {
                continue;
            }
            if seen.is_empty() {
                fit.refused.push(format!(
                    "{}: rule \"{}\" acts only on {}, which the agent does not see with \
                     --trouble-hooks (no per-packet hook): it could never fire; run without \
                     --trouble-hooks, or give the rule classes it sees (`zero_window`, `no_ack`)",
                    at(r),
                    r.name,
                    names(&unseen)
                ));
            } else {
                fit.warnings.push(format!(
                    "{}: warning: rule \"{}\" lists {}, which the agent does not see with \
                     --trouble-hooks: it acts on {} only; consider: `classes = [{}]` to say so, \
                     or run without --trouble-hooks",
                    at(r),
                    r.name,
                    names(&unseen),
                    names(&seen),
                    seen.iter()
                        .map(|c| format!("\"{}\"", c.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        fit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &str) -> Policy {
        Policy::parse(rules, "policy").expect("a valid policy")
    }

    #[test]
    fn rules_acting_only_on_unseen_classes_are_refused_and_mixed_ones_warned() {
        let p = policy(
            "[[rule]]\nname = \"drain\"\nlocal_ports = [80]\nclasses = [\"slow_drain\"]\n\n\
             [[rule]]\nname = \"reader\"\nlocal_ports = [81]\nclasses = [\"recv_backlog\", \
             \"slow_drain\"]\n\n\
             [[rule]]\nname = \"web\"\nlocal_ports = [82]\naction = \"reset\"\n\n\
             [[rule]]\nname = \"wedge\"\nlocal_ports = [83]\nclasses = [\"zero_window\", \
             \"no_ack\"]\n",
        );
        let fit = p.fit_trouble_hooks();
        assert_eq!(fit.refused.len(), 2, "{fit:?}");
        assert!(
            fit.refused[0].starts_with("policy:1: rule \"drain\" acts only on `slow_drain`,"),
            "{}",
            fit.refused[0]
        );
        assert!(
            fit.refused[1].contains("rule \"reader\" acts only on `recv_backlog`, `slow_drain`"),
            "{}",
            fit.refused[1]
        );
        // The default classes include slow_drain: the rule keeps zero_window and no_ack.
        assert_eq!(fit.warnings.len(), 1, "{fit:?}");
        assert!(
            fit.warnings[0].starts_with("policy:11: warning: rule \"web\" lists `slow_drain`")
                && fit.warnings[0].contains("acts on `zero_window`, `no_ack` only")
                && fit.warnings[0].contains("classes = [\"zero_window\", \"no_ack\"]"),
            "{}",
            fit.warnings[0]
        );
    }

    #[test]
    fn no_rules_or_only_seen_classes_fit() {
        assert_eq!(Policy::default().fit_trouble_hooks(), HookFit::default());
        let p = policy("[[rule]]\nname = \"w\"\nlocal_ports = [83]\nclasses = [\"no_ack\"]\n");
        assert_eq!(p.fit_trouble_hooks(), HookFit::default());
    }
}
