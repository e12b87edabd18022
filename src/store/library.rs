//! The Redis Function library `streamhub`, assembled from `lua/*.lua` and rendered with
//! this node's limits.
//!
//! Why a Function library rather than EVALSHA scripts: services in any language publish
//! with one stable, documented `FCALL sh_publish_raw_v1 …` without shipping script text
//! or SHAs; the functions share helper code (MessagePack writer, meta handling) inside
//! one library; and functions survive in RDB/AOF with the data. A node loads the library
//! (`FUNCTION LOAD REPLACE`) at start and again whenever a call answers "Function not
//! found", so a Redis restarted without persistence heals on the next call.

use crate::config::Config;

/// Function names, one per atomic operation. A changed meaning gets a new name.
pub const PUBLISH: &str = "sh_publish_v4";
pub const COMMIT: &str = "sh_commit_v1";
pub const PUBLISH_RAW: &str = "sh_publish_raw_v1";
pub const READ_SINCE: &str = "sh_read_since_v2";
pub const TAIL_READ: &str = "sh_tail_read_v2";
pub const TOPIC_INFO: &str = "sh_topic_info_v2";
pub const GROUP_ENSURE: &str = "sh_group_ensure_v1";
pub const GROUP_ACK: &str = "sh_group_ack_v1";
pub const GROUP_FAIL: &str = "sh_group_fail_v2";
pub const GROUP_PROMOTE: &str = "sh_group_promote_v2";
pub const GROUP_RECLAIM: &str = "sh_group_reclaim_v1";
pub const GROUP_REPLAY: &str = "sh_group_replay_v1";
pub const GROUP_DELETE: &str = "sh_group_delete_v1";
pub const GROUP_DROP_CONSUMERS: &str = "sh_group_drop_consumers_v1";
pub const PRESENCE_UPSERT: &str = "sh_presence_upsert_v1";
pub const PRESENCE_LEAVE: &str = "sh_presence_leave_v1";
pub const PRESENCE_LIST: &str = "sh_presence_list_v1";
pub const USER_UPSERT: &str = "sh_user_upsert_v1";
pub const USER_REMOVE: &str = "sh_user_remove_v1";
pub const USER_STATUS: &str = "sh_user_status_v1";
pub const USER_SET_STATUS: &str = "sh_user_set_status_v1";

const SOURCES: [&str; 14] = [
    include_str!("../../lua/prelude.lua"),
    include_str!("../../lua/publish.lua"),
    include_str!("../../lua/publish_raw.lua"),
    include_str!("../../lua/read_since.lua"),
    include_str!("../../lua/topic_info.lua"),
    include_str!("../../lua/group_ensure.lua"),
    include_str!("../../lua/group_ack.lua"),
    include_str!("../../lua/group_fail.lua"),
    include_str!("../../lua/group_promote.lua"),
    include_str!("../../lua/group_reclaim.lua"),
    include_str!("../../lua/group_dlq.lua"),
    include_str!("../../lua/group_delete.lua"),
    include_str!("../../lua/group_consumers.lua"),
    include_str!("../../lua/presence.lua"),
];

/// The library source with the `{{…}}` placeholders filled in from `config`.
pub fn render(config: &Config) -> String {
    let l = &config.limits;
    SOURCES
        .concat()
        .replace("{{retention_max_len}}", &config.retention.max_len.to_string())
        .replace("{{retention_hard_max_len}}", &config.retention.hard_max_len.to_string())
        .replace("{{retention_max_age_ms}}", &config.retention.max_age_ms.to_string())
        .replace("{{retention_default_ttl_ms}}", &config.retention.default_ttl_ms.to_string())
        .replace("{{retention_rules}}", &retention_rules(config))
        .replace("{{max_staged}}", &config.publish.max_staged.to_string())
        .replace("{{idempotency_window_ms}}", &config.idempotency.window_ms.to_string())
        .replace("{{max_payload_bytes}}", &l.max_payload_bytes.to_string())
        .replace("{{max_headers}}", &l.max_headers.to_string())
        .replace("{{max_header_bytes}}", &l.max_header_bytes.to_string())
        .replace("{{max_topic_bytes}}", &l.max_topic_bytes.to_string())
        .replace("{{max_idempotency_key_bytes}}", &l.max_idempotency_key_bytes.to_string())
}

/// `[[retention.topics]]` as a Lua table literal: `{ {'<pattern>', max_len, max_age_ms,
/// default_ttl_ms}, … }` with -1 for a key the rule leaves out. Patterns hold only topic
/// characters, `*` and `?` (validated), so they need no escaping in a quoted literal.
fn retention_rules(config: &Config) -> String {
    let num = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
    let rules: Vec<String> = config
        .retention
        .topics
        .iter()
        .map(|r| format!("{{'{}', {}, {}, {}}}", r.pattern, num(r.max_len), num(r.max_age_ms), num(r.default_ttl_ms)))
        .collect();
    format!("{{ {} }}", rules.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled_and_every_function_registered() {
        let source = render(&Config::defaults());
        assert!(source.starts_with("#!lua name=streamhub\n"));
        assert!(!source.contains("{{"), "unfilled placeholder");
        for name in [
            PUBLISH,
            COMMIT,
            "sh_publish_v1",
            "sh_publish_v2",
            "sh_publish_v3",
            "sh_read_since_v1",
            "sh_tail_read_v1",
            "sh_topic_info_v1",
            PUBLISH_RAW,
            READ_SINCE,
            TAIL_READ,
            TOPIC_INFO,
            GROUP_ENSURE,
            GROUP_ACK,
            GROUP_FAIL,
            "sh_group_fail_v1",
            GROUP_PROMOTE,
            "sh_group_promote_v1",
            GROUP_RECLAIM,
            GROUP_REPLAY,
            GROUP_DELETE,
            GROUP_DROP_CONSUMERS,
            PRESENCE_UPSERT,
            PRESENCE_LEAVE,
            PRESENCE_LIST,
            USER_UPSERT,
            USER_REMOVE,
            USER_STATUS,
            USER_SET_STATUS,
        ] {
            assert!(source.contains(&format!("'{name}'")), "{name} not registered");
        }
    }
}
