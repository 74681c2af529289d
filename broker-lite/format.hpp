// Output helpers of the `shmbus` command: message lines (text and JSON), aligned tables, the Prometheus
// text format, and parsing of --attr KEY=VALUE. Pure functions, no I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shmbus/topic.hpp"

namespace shmbus::broker {

bool valid_utf8(std::string_view s);
std::string base64(std::span<const std::byte> bytes);

// One received message as a JSON object: topic, publisher, seq, timestamp_ns, attrs (an object: string,
// integer, real or boolean values), size, payload (when the bytes are valid UTF-8) or payload_b64,
// missed, and, for queues (redelivered set), redelivered.
nlohmann::json message_json(std::string_view topic, std::uint64_t publisher, std::uint64_t seq,
                            std::uint64_t timestamp_ns, const std::vector<Attr>& attrs,
                            std::span<const std::byte> payload, std::uint64_t missed,
                            std::optional<bool> redelivered);

// An attribute that owns its strings (what the command line gives); view() is valid while it lives.
struct OwnedAttr {
  std::string key;
  std::string text;
  std::optional<std::int64_t> number;
  Attr view() const { return number ? Attr{key, *number} : Attr{key, std::string_view(text)}; }
};
// KEY=VALUE; VALUE that is a whole decimal integer (optionally signed, fitting int64) becomes an integer
// attribute, anything else a string. nullopt when there is no '=' or KEY is empty.
std::optional<OwnedAttr> parse_attr(std::string_view kv);

// Left-aligned first column, right-aligned numbers (cells that parse as numbers), two spaces apart.
std::string format_table(const std::vector<std::string>& header,
                         const std::vector<std::vector<std::string>>& rows);

// The Prometheus text exposition of a "topics" reply's array.
std::string prometheus_text(const nlohmann::json& topics, std::string_view domain);

}  // namespace shmbus::broker
