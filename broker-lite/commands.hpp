// The subcommands of the `shmbus` command. main.cpp parses the command line (CLI11) into these
// structs; each run_* returns the process exit status:
//   0 ok, 1 runtime failure, 3 not running (status), 64 usage, 65 bad data (an invalid name, an oversize
//   message), 69 no broker and autostart off, 78 config error.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "shmbus/result.hpp"

namespace shmbus::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitNotRunning = 3;
inline constexpr int kExitUsage = 64;
inline constexpr int kExitDataErr = 65;
inline constexpr int kExitUnavailable = 69;
inline constexpr int kExitConfig = 78;

// invalid_argument, too_large -> 65; unavailable -> 69; anything else -> 1.
int exit_code_for(const Error& e);

struct BrokerArgs {
  std::string domain;
  std::string config;  // -c FILE
  bool autostart = false;
  std::optional<std::uint32_t> idle_exit_s;
  bool purge_on_exit = false;  // remove every segment of the domain at shutdown
  std::string log_level;       // empty: the config's, else info
  bool check_config = false;
};

struct TopicCreateArgs {
  std::string domain;
  std::string name;
  std::string kind;
  std::optional<std::uint64_t> depth;
  std::optional<std::uint64_t> max_size;
  std::string overflow;
  std::optional<std::uint32_t> max_subscribers;
  std::optional<std::uint32_t> max_publishers;
};

struct PubArgs {
  std::string domain;
  std::string topic;
  std::optional<std::string> data;  // "-": stdin, one message per line
  std::optional<std::uint64_t> count;
  double rate = 0;  // messages per second; 0: as fast as possible
  std::optional<std::size_t> size;
  std::vector<std::string> attrs;  // KEY=VALUE
};

struct SubArgs {
  std::string domain;
  std::string topic;
  std::optional<std::uint64_t> count;
  std::optional<double> timeout_s;
  std::string format = "text";  // text | json
  bool queue = false;           // consume (queue) rather than sub (stream)
};

int run_broker(const BrokerArgs& a);
int run_status(const std::string& domain, bool json);
int run_topics(const std::string& domain, bool json);
int run_topic_create(const TopicCreateArgs& a);
int run_topic_delete(const std::string& domain, const std::string& name);
int run_stats(const std::string& domain, const std::string& format);
// Stop the broker; with `purge`, also remove every segment of the domain (done by the broker as it exits,
// or here when no broker runs).
int run_stop(const std::string& domain, bool purge);
int run_pub(const PubArgs& a);
int run_sub(const SubArgs& a);

}  // namespace shmbus::cli
