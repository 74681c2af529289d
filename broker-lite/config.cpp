#include "config.hpp"

#include <grp.h>
#include <unistd.h>

#include <toml++/toml.h>
#include <cerrno>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "shmbus/paths.hpp"

namespace shmbus::broker {
namespace {

// Thrown inside the parser only, and turned into an Error by parse_config(): the parser stops at the
// first problem, and every check is one line instead of an if-return ladder.
struct ConfigError {
  std::string message;
};

class Parser {
 public:
  explicit Parser(std::string_view source) : source_(source) {}

  BrokerConfig parse(const toml::table& root) {
    BrokerConfig c;
    for (auto&& [key, node] : root) {
      const std::string_view k = key.str();
      if (k == "log_level") {
        const std::string level = string_of(node, "log_level");
        if (!valid_log_level(level))
          fail(node.source(),
               "log_level \"" + level + "\" is not one of trace, debug, info, warn, error, critical, off");
        c.log_level = level;
      } else if (k == "idle_exit_s") {
        c.idle_exit_s = static_cast<std::uint32_t>(integer_of(node, "idle_exit_s", 1, 7 * 24 * 3600));
      } else if (k == "segments") {
        segments(table_of(node, "segments"), c);
      } else if (k == "defaults") {
        const toml::table& t = table_of(node, "defaults");
        for (auto&& [dk, dn] : t)
          if (!topic_key(dk, dn, c.defaults, "[defaults]")) unknown(dk, "[defaults]");
        check_options(t.source(), c.defaults, "[defaults]");
      } else if (k == "limits") {
        limits(table_of(node, "limits"), c);
      } else if (k == "topic") {
        const toml::array* arr = node.as_array();
        if (arr == nullptr) fail(node.source(), "\"topic\" must be an array of tables: write [[topic]]");
        for (const toml::node& item : *arr) {
          const toml::table* t = item.as_table();
          if (t == nullptr) fail(item.source(), "each \"topic\" must be a table: write [[topic]]");
          topic(*t, c);
        }
      } else {
        unknown(key, "the top level");
      }
    }
    if (c.topics.size() > c.max_topics)
      fail(root.source(), std::to_string(c.topics.size()) + " [[topic]] tables but [limits] max_topics is " +
                              std::to_string(c.max_topics));
    return c;
  }

 private:
  [[noreturn]] void fail(const toml::source_region& where, const std::string& what) const {
    throw ConfigError{std::string(source_) + ":" + std::to_string(where.begin.line) + ":" +
                      std::to_string(where.begin.column) + ": " + what};
  }

  [[noreturn]] void unknown(const toml::key& key, const std::string& where) const {
    fail(key.source(), "unknown key \"" + std::string(key.str()) + "\" in " + where);
  }

  std::string string_of(const toml::node& n, const std::string& name) const {
    const auto* s = n.as_string();
    if (s == nullptr) fail(n.source(), name + " must be a string");
    return s->get();
  }

  std::int64_t integer_of(const toml::node& n, const std::string& name, std::int64_t lo,
                          std::int64_t hi) const {
    const auto* i = n.as_integer();
    if (i == nullptr || i->get() < lo || i->get() > hi)
      fail(n.source(), name + " must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi));
    return i->get();
  }

  const toml::table& table_of(const toml::node& n, const std::string& name) const {
    const auto* t = n.as_table();
    if (t == nullptr) fail(n.source(), name + " must be a table: write [" + name + "]");
    return *t;
  }

  void segments(const toml::table& t, BrokerConfig& c) const {
    for (auto&& [key, node] : t) {
      const std::string_view k = key.str();
      if (k == "mode") {
        c.segment_mode = mode_of(node);
      } else if (k == "group") {
        const std::string g = string_of(node, "[segments] group");
        c.segment_group = g;
        c.segment_gid = gid_of(node, g);
      } else {
        unknown(key, "[segments]");
      }
    }
  }

  // "0660" (a string of octal digits) or 0o660 (a TOML octal integer).
  unsigned mode_of(const toml::node& n) const {
    std::int64_t m = -1;
    if (const auto* i = n.as_integer()) {
      m = i->get();
    } else if (const auto* s = n.as_string()) {
      const std::string& text = s->get();
      if (!text.empty() && text.size() <= 4 && text.find_first_not_of("01234567") == std::string::npos)
        m = std::stoll(text, nullptr, 8);
    } else {
      fail(n.source(), "[segments] mode must be an octal string such as \"0660\"");
    }
    if (m < 0 || m > 0777)
      fail(n.source(),
           "[segments] mode must be an octal file mode from \"0600\" to \"0777\", such as \"0660\"");
    if ((m & 0600) != 0600)
      fail(n.source(),
           "[segments] mode must grant the owner read and write (0600): the broker opens its own segments");
    return static_cast<unsigned>(m);
  }

  gid_t gid_of(const toml::node& n, const std::string& name) const {
    if (name.empty()) fail(n.source(), "[segments] group is empty");
    if (name.find_first_not_of("0123456789") == std::string::npos)
      return static_cast<gid_t>(std::stoul(name));
    std::vector<char> buf(16384);
    group g{};
    group* found = nullptr;
    const int err = ::getgrnam_r(name.c_str(), &g, buf.data(), buf.size(), &found);
    if (err != 0 || found == nullptr)
      fail(n.source(),
           "[segments] group \"" + name + "\" does not exist on this host (create it, or remove the key)");
    return found->gr_gid;
  }

  void limits(const toml::table& t, BrokerConfig& c) const {
    for (auto&& [key, node] : t) {
      const std::string_view k = key.str();
      if (k == "max_topics")
        c.max_topics =
            static_cast<std::uint32_t>(integer_of(node, "[limits] max_topics", 1, kMaxDirectoryTopics));
      else if (k == "max_clients")
        c.max_clients = static_cast<std::uint32_t>(integer_of(node, "[limits] max_clients", 1, 65536));
      else
        unknown(key, "[limits]");
    }
  }

  // One key of a topic's options ([defaults] or [[topic]]); false if `key` is not one.
  bool topic_key(const toml::key& key, const toml::node& n, TopicOptions& o, const std::string& where) const {
    const std::string_view k = key.str();
    if (k == "depth") {
      o.depth = static_cast<std::uint64_t>(integer_of(n, where + " depth", 1, 1 << 20));
    } else if (k == "max_size") {
      o.max_size = static_cast<std::uint64_t>(integer_of(n, where + " max_size", 1, std::int64_t{1} << 30));
    } else if (k == "max_subscribers") {
      o.max_subscribers =
          static_cast<std::uint32_t>(integer_of(n, where + " max_subscribers", 1, kMaxStreamPorts));
    } else if (k == "max_publishers") {
      o.max_publishers =
          static_cast<std::uint32_t>(integer_of(n, where + " max_publishers", 1, kMaxStreamPorts));
    } else if (k == "attrs_max") {
      o.attrs_max = static_cast<std::uint32_t>(integer_of(n, where + " attrs_max", 0, 4096));
    } else if (k == "overflow") {
      const std::string v = string_of(n, where + " overflow");
      const auto p = parse_overflow(v);
      if (!p) fail(n.source(), where + " overflow \"" + v + "\" is not one of drop-oldest, block");
      o.overflow = *p;
    } else {
      return false;
    }
    return true;
  }

  void check_options(const toml::source_region& where, const TopicOptions& o, const std::string& what) const {
    if (auto st = check_topic_options(o); !st) fail(where, what + ": " + st.error().message());
  }

  void topic(const toml::table& t, BrokerConfig& c) {
    TopicSpec spec;
    spec.options = c.defaults;
    bool named = false;
    for (auto&& [key, node] : t) {
      const std::string_view k = key.str();
      if (k == "name") {
        spec.name = string_of(node, "[[topic]] name");
        if (auto st = check_topic_name(spec.name); !st) fail(node.source(), st.error().message());
        if (!names_.insert(spec.name).second)
          fail(node.source(), "topic \"" + spec.name + "\" is declared twice");
        named = true;
      } else if (k == "kind") {
        const std::string v = string_of(node, "[[topic]] kind");
        const auto kind = parse_kind(v);
        if (!kind) fail(node.source(), "[[topic]] kind \"" + v + "\" is not one of stream, queue");
        spec.options.kind = *kind;
      } else if (!topic_key(key, node, spec.options, "[[topic]]")) {
        unknown(key, "[[topic]]");
      }
    }
    if (!named) fail(t.source(), "[[topic]] without a name");
    check_options(t.source(), spec.options, "topic \"" + spec.name + "\"");
    c.topics.push_back(std::move(spec));
  }

  std::string_view source_;
  std::set<std::string> names_;
};

}  // namespace

bool valid_log_level(std::string_view l) {
  return l == "trace" || l == "debug" || l == "info" || l == "warn" || l == "error" || l == "critical" ||
         l == "off";
}

Result<BrokerConfig> parse_config(std::string_view text, std::string_view source) {
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    return Error(Errc::invalid_argument, std::string(source) + ":" + std::to_string(e.source().begin.line) +
                                             ":" + std::to_string(e.source().begin.column) + ": " +
                                             std::string(e.description()));
  }
  // toml++ keeps a table's keys sorted (std::map), so Parser sees [defaults] before the [[topic]] tables
  // wherever the file puts them, and a topic starts from the complete defaults.
  static_assert(std::string_view("defaults") < std::string_view("topic"));
  try {
    return Parser(source).parse(root);
  } catch (const ConfigError& e) {
    return Error(Errc::invalid_argument, e.message);
  }
}

Result<BrokerConfig> load_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno != 0 ? errno : ENOENT;
    return Error::from_errno(err, "cannot read config file \"" + path + "\"");
  }
  std::ostringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), path);
}

}  // namespace shmbus::broker
