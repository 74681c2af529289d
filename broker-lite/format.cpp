#include "format.hpp"

#include <algorithm>
#include <charconv>
#include <sstream>

namespace shmbus::broker {

bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      n = 1;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 2;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;  // the sequence is cut off
    for (std::size_t k = 1; k <= n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += n + 1;
  }
  return true;
}

std::string base64(std::span<const std::byte> b) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((b.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= b.size(); i += 3) {
    const std::uint32_t v = (std::to_integer<std::uint32_t>(b[i]) << 16) |
                            (std::to_integer<std::uint32_t>(b[i + 1]) << 8) |
                            std::to_integer<std::uint32_t>(b[i + 2]);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (const std::size_t rest = b.size() - i; rest != 0) {
    std::uint32_t v = std::to_integer<std::uint32_t>(b[i]) << 16;
    if (rest == 2) v |= std::to_integer<std::uint32_t>(b[i + 1]) << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += rest == 2 ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

nlohmann::json message_json(std::string_view topic, std::uint64_t publisher, std::uint64_t seq,
                            std::uint64_t timestamp_ns, const std::vector<Attr>& attrs,
                            std::span<const std::byte> payload, std::uint64_t missed,
                            std::optional<bool> redelivered) {
  nlohmann::json a = nlohmann::json::object();
  for (const Attr& at : attrs) {
    const std::string k(at.key);
    const AttrValue& v = at.value;
    if (v.is_int())
      a[k] = v.as_int();
    else if (v.is_real())
      a[k] = v.as_real();
    else if (v.is_bool())
      a[k] = v.as_bool();
    else
      a[k] = valid_utf8(v.as_string()) ? nlohmann::json(v.as_string())
                                       : nlohmann::json(base64(std::as_bytes(std::span(v.as_string()))));
  }
  nlohmann::json j = {{"topic", topic}, {"publisher", publisher},
                      {"seq", seq},     {"timestamp_ns", timestamp_ns},
                      {"attrs", a},     {"size", payload.size()}};
  const std::string_view text(reinterpret_cast<const char*>(payload.data()), payload.size());
  if (valid_utf8(text))
    j["payload"] = text;
  else
    j["payload_b64"] = base64(payload);
  j["missed"] = missed;
  if (redelivered) j["redelivered"] = *redelivered;
  return j;
}

std::optional<OwnedAttr> parse_attr(std::string_view kv) {
  const auto eq = kv.find('=');
  if (eq == std::string_view::npos || eq == 0) return std::nullopt;
  OwnedAttr out;
  out.key = std::string(kv.substr(0, eq));
  const std::string_view v = kv.substr(eq + 1);
  std::string_view num = v;
  if (num.size() >= 2 && num[0] == '+' && num[1] >= '0' && num[1] <= '9')
    num.remove_prefix(1);  // from_chars: '-' only
  std::int64_t i = 0;
  const auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), i);
  if (!num.empty() && ec == std::errc() && end == num.data() + num.size()) {
    out.number = i;
  } else {
    out.text = std::string(v);
  }
  return out;
}

namespace {
bool numeric(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789.") == std::string::npos;
}
}  // namespace

std::string format_table(const std::vector<std::string>& header,
                         const std::vector<std::vector<std::string>>& rows) {
  const std::size_t cols = header.size();
  std::vector<std::size_t> width(cols, 0);
  std::vector<bool> right(cols, !rows.empty());  // a column of numbers only is right-aligned
  for (std::size_t c = 0; c < cols; ++c) width[c] = header[c].size();
  for (const auto& r : rows)
    for (std::size_t c = 0; c < cols; ++c) {
      const std::string& cell = c < r.size() ? r[c] : std::string();
      width[c] = std::max(width[c], cell.size());
      if (!numeric(cell)) right[c] = false;
    }
  std::ostringstream out;
  auto line = [&](const std::vector<std::string>& cells) {
    std::string l;
    for (std::size_t c = 0; c < cols; ++c) {
      const std::string cell = c < cells.size() ? cells[c] : "";
      const std::string pad(width[c] - cell.size(), ' ');
      if (c != 0) l += "  ";
      l += right[c] ? pad + cell : cell + pad;
    }
    while (!l.empty() && l.back() == ' ') l.pop_back();
    out << l << '\n';
  };
  line(header);
  for (const auto& r : rows) line(r);
  return out.str();
}

namespace {
std::string label_value(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"')
      out += '\\', out += c;
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}
}  // namespace

std::string prometheus_text(const nlohmann::json& topics, std::string_view domain) {
  struct Metric {
    const char* field;
    const char* name;
    const char* type;
    const char* help;
  };
  static constexpr Metric kMetrics[] = {
      {"published", "shmbus_topic_published_total", "counter", "Messages published to the topic."},
      {"delivered", "shmbus_topic_delivered_total", "counter", "Messages taken by subscribers or consumers."},
      {"acked", "shmbus_topic_acked_total", "counter", "Queue messages acknowledged."},
      {"dropped", "shmbus_topic_dropped_total", "counter", "Stream messages a subscriber missed."},
      {"redelivered", "shmbus_topic_redelivered_total", "counter",
       "Queue messages put back for another consumer."},
      {"queued", "shmbus_topic_queued", "gauge", "Messages waiting in the topic's rings."},
      {"in_flight", "shmbus_topic_in_flight", "gauge", "Messages accepted and not yet finished with."},
      {"subscribers", "shmbus_topic_subscribers", "gauge", "Active stream subscribers."},
      {"depth", "shmbus_topic_depth", "gauge", "Ring capacity in messages."},
  };
  std::ostringstream out;
  for (const Metric& m : kMetrics) {
    out << "# HELP " << m.name << ' ' << m.help << '\n' << "# TYPE " << m.name << ' ' << m.type << '\n';
    for (const auto& t : topics) {
      out << m.name << "{domain=\"" << label_value(domain) << "\",topic=\""
          << label_value(t.value("name", std::string())) << "\",kind=\""
          << label_value(t.value("kind", std::string())) << "\"} " << t.value(m.field, std::uint64_t{0})
          << '\n';
    }
  }
  return out.str();
}

}  // namespace shmbus::broker
