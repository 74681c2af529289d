// What a topic is made of: its kind, depth, sizes and policies (public; the broker applies them when it
// creates the topic).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string_view>

#include "shmbus/result.hpp"

namespace shmbus {

enum class TopicKind : std::uint32_t { stream = 1, queue = 2 };
enum class Overflow : std::uint32_t { drop_oldest = 1, block = 2 };

const char* to_string(TopicKind k);
const char* to_string(Overflow o);
std::optional<TopicKind> parse_kind(std::string_view s);
std::optional<Overflow> parse_overflow(std::string_view s);

inline constexpr std::uint32_t kMaxStreamPorts = 4096;  // publishers or subscribers of one stream (config
                                                        // chooses; this bounds the shared tables' size)

struct TopicOptions {
  TopicKind kind = TopicKind::stream;
  // Stream: messages each subscriber's connection holds per publisher. Queue: messages the queue holds.
  // Rounded up to a power of two.
  std::uint64_t depth = 64;
  std::uint64_t max_size = 4096;              // payload bytes
  Overflow overflow = Overflow::drop_oldest;  // streams only; queues always give back-pressure
  std::uint32_t max_subscribers = 8;          // streams only, 1..kMaxStreamPorts
  std::uint32_t max_publishers = 4;           // streams only, 1..kMaxStreamPorts
  std::uint32_t attrs_max = 256;              // bytes of encoded attributes per message
  unsigned mode = 0600;                       // segment file mode
  gid_t group = static_cast<gid_t>(-1);       // segment group, set at creation (before the mode grants it)
};

// Checks ranges; the message names the field and the limit.
Status check_topic_options(const TopicOptions& o);

}  // namespace shmbus
