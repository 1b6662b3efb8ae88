//! What PEFT writes as `target_modules`: the list as given, or — for `all-linear` — the adapted module paths,
//! condensed to the shortest distinguishing suffixes once there are many of them.

use super::lora::TargetModules;
use std::collections::BTreeSet;

/// PEFT condenses a `target_modules` list of at least this many entries to the shortest suffixes.
const MIN_TARGET_MODULES_FOR_OPTIMIZATION: usize = 20;

// ANCHOR: peft_target_modules
/// What PEFT 0.21.2 stores as `target_modules` after injecting the adapter into the modules `adapted`:
///
/// * a list of names → the names (a set in PEFT; we sort it);
/// * `all-linear` → PEFT expands it to the set of full module paths it adapted, and, when that set has at
///   least 20 entries, condenses it to the shortest dotted suffixes that still single the targets out among
///   the model's other modules (`_find_minimal_target_modules`) — for a Llama that is the seven leaf names.
///   The model's other modules are not known here; we use the containers above the adapted paths plus
///   `lm_head`, which gives PEFT's answer whenever no non-linear module shares a leaf name with a linear one.
///
/// (PEFT condenses a hand-written list of 20+ names too; we leave such a list as given.)
pub fn peft_target_modules<'a>(targets: &TargetModules, adapted: impl Iterator<Item = &'a str>) -> Vec<String> {
    match targets {
        TargetModules::Names(names) => names.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect(),
        TargetModules::AllLinear => {
            let adapted: BTreeSet<String> = adapted.map(str::to_owned).collect();
            if adapted.len() < MIN_TARGET_MODULES_FOR_OPTIMIZATION {
                return adapted.into_iter().collect();
            }
            let mut others: BTreeSet<String> = BTreeSet::from(["lm_head".to_string()]);
            for path in &adapted {
                let mut end = 0;
                while let Some(dot) = path[end..].find('.') {
                    end += dot;
                    others.insert(path[..end].to_string());
                    end += 1;
                }
            }
            others.retain(|o| !adapted.contains(o));
            let minimal = find_minimal_target_modules(&adapted, &others);
            if minimal.len() < adapted.len() { minimal.into_iter().collect() } else { adapted.into_iter().collect() }
        }
    }
}

/// PEFT's `_find_minimal_target_modules`: for each target (in the order of their suffix lists), take its
/// shortest dotted suffix that is no suffix of any other module, unless a suffix already chosen covers it.
pub fn find_minimal_target_modules(targets: &BTreeSet<String>, others: &BTreeSet<String>) -> BTreeSet<String> {
    // "a.b.c" → ["c", "b.c", "a.b.c"]
    let suffixes = |s: &str| -> Vec<String> {
        let parts: Vec<&str> = s.split('.').collect();
        (0..parts.len()).rev().map(|i| parts[i..].join(".")).collect()
    };
    let other_suffixes: BTreeSet<String> = others.iter().flat_map(|o| suffixes(o)).collect();
    let mut items: Vec<(Vec<String>, &String)> = targets.iter().map(|t| (suffixes(t), t)).collect();
    items.sort(); // Python sorts the (item, suffixes) pairs by the suffix lists
    let mut required: BTreeSet<String> = BTreeSet::new();
    for (sfx, item) in items {
        for s in sfx {
            if required.contains(&s) || other_suffixes.contains(&s) {
                continue;
            }
            if !required.iter().any(|req| item.ends_with(&format!(".{req}"))) {
                required.insert(s);
                break;
            }
        }
    }
    if required.is_empty() { targets.clone() } else { required }
}
// ANCHOR_END: peft_target_modules
