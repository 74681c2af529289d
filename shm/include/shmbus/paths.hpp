// Where a bus domain lives: its runtime directory (control socket, lock and pid files) and the names of
// its segments.
//
// Runtime directory: $SHMBUS_RUNTIME_DIR, else /run/shmbus when it exists or can be made writable, else
// $XDG_RUNTIME_DIR/shmbus, else /tmp/shmbus-$UID. A domain ($SHMBUS_DOMAIN, else "default") gets the
// sub-directory <runtime>/<domain>/ with broker.sock and broker.pid. Its segments are
// /dev/shm/shmbus.<domain>.dir (the topic directory) and /dev/shm/shmbus.<domain>.<id> (one per topic),
// whatever the runtime directory; so is the broker's lock, /dev/shm/shmbus.<domain>.lock.
#pragma once

#include <string>
#include <string_view>

#include "shmbus/result.hpp"

namespace shmbus {

inline constexpr std::size_t kMaxDomainLen = 32;
inline constexpr std::size_t kMaxTopicNameLen = 200;

// Domain names: 1..32 bytes of [A-Za-z0-9_-].
Status check_domain_name(std::string_view domain);
// Topic names: tokens of [A-Za-z0-9_-] separated by '.', at most 200 bytes; no empty token, no
// wildcard. The error names the offset and the reason ("empty token at offset 2").
Status check_topic_name(std::string_view name);

// $SHMBUS_DOMAIN or "default".
std::string default_domain();
// The runtime directory (created with mode 0700 if missing; /run/shmbus with 0755).
Result<std::string> runtime_dir();
// <runtime>/<domain>, created if missing.
Result<std::string> domain_dir(std::string_view domain);

std::string directory_segment_name(std::string_view domain);
std::string topic_segment_name(std::string_view domain, std::uint64_t topic_id);

}  // namespace shmbus
