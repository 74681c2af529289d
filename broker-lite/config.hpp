// The broker's configuration file (TOML, read with toml++):
//
//   log_level = "info"            # trace, debug, info, warn, error, critical, off
//   idle_exit_s = 10              # autostarted brokers only: exit after this many seconds without clients
//   [segments]
//   mode = "0660"                 # file mode of the control socket and of every segment (octal)
//   group = "shmbus"              # group of the socket, the domain directory and the segments
//   [defaults]                    # what topic_create uses for the fields a request leaves out
//   depth = 64
//   max_size = 4096
//   overflow = "drop-oldest"      # or "block"
//   max_subscribers = 8
//   attrs_max = 256
//   [limits]
//   max_topics = 1024
//   max_clients = 256
//   [[topic]]                     # created at start when missing
//   name = "orders.new"
//   kind = "queue"                # or "stream" (the default)
//   depth = 256                   # and any other [defaults] key
//
// Every key is optional. An unknown key, a value of the wrong type or out of range, an unknown group, a
// duplicate topic: each is an error that names FILE:LINE:COLUMN and what is wrong (Errc::invalid_argument).
// The parser runs in the broker's thread before anything else; it touches no shared state.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shmbus/result.hpp"
#include "shmbus/topic.hpp"

namespace shmbus::broker {

struct TopicSpec {
  std::string name;
  TopicOptions options;  // mode is filled in from [segments] when the broker creates the topic
};

struct BrokerConfig {
  std::optional<std::string> log_level;  // a valid spdlog level name when set
  std::optional<std::uint32_t> idle_exit_s;
  unsigned segment_mode = 0600;
  std::optional<std::string> segment_group;  // name, as written
  std::optional<gid_t> segment_gid;          // resolved with getgrnam
  TopicOptions defaults;                     // kind is always stream here; a request names its own
  std::uint32_t max_topics = 1024;           // sizes a new topic directory (an adopted one keeps its size)
  std::uint32_t max_clients = 256;
  std::vector<TopicSpec> topics;
};

// Parse a configuration from `text`; `source` names it in error messages (normally the file's path).
Result<BrokerConfig> parse_config(std::string_view text, std::string_view source);
// Read and parse the file at `path`. A file that cannot be read is Errc::not_found / permission_denied.
Result<BrokerConfig> load_config(const std::string& path);

// "trace" ... "off"; false for anything else.
bool valid_log_level(std::string_view level);

}  // namespace shmbus::broker
