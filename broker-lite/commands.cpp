#include "commands.hpp"

#include <poll.h>
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <thread>

#include "broker.hpp"
#include "config.hpp"
#include "format.hpp"
#include "shmbus/shmbus.hpp"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

namespace shmbus::cli {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::string in_quotes(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

int fail(const char* cmd, const Error& e) {
  std::cerr << "shmbus " << cmd << ": " << e.message() << "\n";
  return exit_code_for(e);
}

int usage(const char* cmd, const std::string& what) {
  std::cerr << "shmbus " << cmd << ": " << what << "\nRun with --help for more information.\n";
  return kExitUsage;
}

// Management commands never start a broker: asking a broker that does not run for its status or its
// topics should say so, not start one.
Result<Client> connect_management(const std::string& domain, const char* cmd) {
  ClientOptions o;
  o.domain = domain;
  o.name = std::string("shmbus ") + cmd;
  o.autostart = false;
  auto c = Client::connect(o);
  if (!c && c.error().code() == Errc::unavailable)
    return Error(Errc::unavailable,
                 "no broker runs for domain " + in_quotes(domain) + " (start one with `shmbus broker`)");
  return c;
}

// pub, sub, consume and topic create follow the library's rule: start a broker if none runs, unless
// SHMBUS_AUTOSTART=0.
Result<Client> connect_data(const std::string& domain, const char* cmd) {
  ClientOptions o;
  o.domain = domain;
  o.name = std::string("shmbus ") + cmd;
  return Client::connect(o);
}

std::string human_duration(double s) {
  char buf[64];
  if (s < 60)
    std::snprintf(buf, sizeof buf, "%.1f s", s);
  else if (s < 3600)
    std::snprintf(buf, sizeof buf, "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  else
    std::snprintf(buf, sizeof buf, "%dh%02dm", static_cast<int>(s) / 3600, (static_cast<int>(s) / 60) % 60);
  return buf;
}

std::string num(const json& t, const char* key) {
  return std::to_string(t.value(key, std::uint64_t{0}));
}

std::atomic<bool> g_interrupted{false};

void on_interrupt(int) {
  g_interrupted.store(true, std::memory_order_relaxed);
}

// SIGINT/SIGTERM end sub/consume/pub loops between messages; SIGPIPE turns into a failed write.
void install_interrupt_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_interrupt;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a blocked read of stdin returns
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
}

Result<TopicInfo> find_topic(const std::string& domain, const std::string& name) {
  auto dir = DirectoryView::open(domain);
  if (!dir)
    return Error(dir.error().code(), "cannot read the topic directory of domain " + in_quotes(domain) + ": " +
                                         dir.error().message());
  auto t = dir->find(name);
  if (!t)
    return Error(Errc::not_found, "topic " + in_quotes(name) + " does not exist in domain " +
                                      in_quotes(domain) + " (create it with `shmbus topic create " + name +
                                      " --kind stream|queue`)");
  return *t;
}

}  // namespace

int exit_code_for(const Error& e) {
  switch (e.code()) {
    case Errc::invalid_argument:
    case Errc::too_large:
      return kExitDataErr;
    case Errc::unavailable:
      return kExitUnavailable;
    default:
      return kExitFailure;
  }
}

// ---- broker ----

int run_broker(const BrokerArgs& a) {
  auto logger = spdlog::stderr_color_mt("shmbus");
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ shmbus broker[%P]: %v");
  spdlog::set_default_logger(logger);
  if (a.check_config) {
    if (a.config.empty()) return usage("broker", "--check-config needs -c FILE");
    auto c = broker::load_config(a.config);
    if (!c) {
      std::cerr << "shmbus broker: " << c.error().message() << "\n";
      return kExitConfig;
    }
    std::cout << "config OK: " << c->topics.size() << " topics\n";
    return kExitOk;
  }
  broker::BrokerOptions o;
  if (!a.config.empty()) {
    auto c = broker::load_config(a.config);
    if (!c) {
      std::cerr << "shmbus broker: " << c.error().message() << "\n";
      return kExitConfig;
    }
    o.config = std::move(c).value();
  }
  const std::string level = !a.log_level.empty() ? a.log_level : o.config.log_level.value_or("info");
  spdlog::set_level(spdlog::level::from_str(level));
  o.domain = a.domain;
  o.autostart = a.autostart;
  o.idle_exit_s = a.idle_exit_s;
  o.purge_on_exit = a.purge_on_exit;
  auto b = broker::Broker::start(std::move(o));
  if (!b) {
    std::cerr << "shmbus broker: " << b.error().message() << "\n";
    return b.error().code() == Errc::invalid_argument ? kExitUsage : kExitFailure;
  }
  return (*b)->run();
}

// ---- management ----

int run_status(const std::string& domain, bool as_json) {
  auto c = connect_management(domain, "status");
  if (!c) {
    if (c.error().code() != Errc::unavailable) return fail("status", c.error());
    if (as_json)
      std::cout << json{{"running", false}, {"domain", domain}}.dump() << "\n";
    else
      std::cerr << "shmbus status: no broker runs for domain " << in_quotes(domain) << "\n";
    return kExitNotRunning;
  }
  auto r = c->request({{"op", "status"}});
  if (!r) return fail("status", r.error());
  json s = *r;
  s.erase("ok");
  if (as_json) {
    s["running"] = true;
    std::cout << s.dump() << "\n";
    return kExitOk;
  }
  std::cout << "broker for domain " << in_quotes(s.value("domain", domain)) << " is running\n"
            << "  pid          " << s.value("pid", 0) << "\n"
            << "  uptime       " << human_duration(s.value("uptime_s", 0.0)) << "\n"
            << "  clients      " << s.value("clients", 0) << " (this command included)\n"
            << "  topics       " << s.value("topics", 0) << "\n"
            << "  autostarted  " << (s.value("autostart", false) ? "yes (exits when idle)" : "no") << "\n"
            << "  runtime dir  " << s.value("runtime_dir", std::string()) << "\n";
  return kExitOk;
}

int run_topics(const std::string& domain, bool as_json) {
  auto c = connect_management(domain, "topics");
  if (!c) return fail("topics", c.error());
  auto r = c->request({{"op", "topics"}});
  if (!r) return fail("topics", r.error());
  const json& topics = (*r)["topics"];
  if (as_json) {
    std::cout << topics.dump() << "\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& t : topics) {
    const bool queue = t.value("kind", std::string()) == "queue";
    rows.push_back({t.value("name", std::string()), t.value("kind", std::string()), num(t, "depth"),
                    num(t, "max_size"), queue ? "-" : t.value("overflow", std::string()),
                    queue ? "-" : num(t, "subscribers") + "/" + num(t, "max_subscribers"), num(t, "queued")});
  }
  std::cout << broker::format_table(
      {"NAME", "KIND", "DEPTH", "MAX_SIZE", "OVERFLOW", "SUBSCRIBERS", "QUEUED"}, rows);
  return kExitOk;
}

int run_topic_create(const TopicCreateArgs& a) {
  if (auto st = check_topic_name(a.name); !st) return fail("topic create", st.error());
  json req = {{"op", "topic_create"}, {"name", a.name}, {"kind", a.kind}};
  if (a.depth) req["depth"] = *a.depth;
  if (a.max_size) req["max_size"] = *a.max_size;
  if (!a.overflow.empty()) req["overflow"] = a.overflow;
  if (a.max_subscribers) req["max_subscribers"] = *a.max_subscribers;
  if (a.max_publishers) req["max_publishers"] = *a.max_publishers;
  auto c = connect_data(a.domain, "topic create");
  if (!c) return fail("topic create", c.error());
  auto r = c->request(req);
  if (!r) return fail("topic create", r.error());
  const json& t = (*r)["topic"];
  std::cout << "created " << t.value("kind", a.kind) << " " << in_quotes(a.name) << " (id " << num(t, "id")
            << ", depth " << num(t, "depth") << ", max size " << num(t, "max_size") << " bytes)\n";
  return kExitOk;
}

int run_topic_delete(const std::string& domain, const std::string& name) {
  if (auto st = check_topic_name(name); !st) return fail("topic delete", st.error());
  auto c = connect_management(domain, "topic delete");
  if (!c) return fail("topic delete", c.error());
  auto r = c->request({{"op", "topic_delete"}, {"name", name}});
  if (!r) return fail("topic delete", r.error());
  std::cout << "deleted " << in_quotes(name) << "\n";
  return kExitOk;
}

int run_stats(const std::string& domain, const std::string& format) {
  auto c = connect_management(domain, "stats");
  if (!c) return fail("stats", c.error());
  auto s = c->request({{"op", "status"}});
  if (!s) return fail("stats", s.error());
  auto r = c->request({{"op", "topics"}});
  if (!r) return fail("stats", r.error());
  const json& topics = (*r)["topics"];
  if (format == "json") {
    std::cout << json{{"domain", domain},
                      {"pid", (*s)["pid"]},
                      {"uptime_s", (*s)["uptime_s"]},
                      {"clients", (*s)["clients"]},
                      {"topics", topics}}
                     .dump()
              << "\n";
  } else if (format == "prometheus") {
    std::cout
        << "# HELP shmbus_broker_up Whether the domain's broker answered.\n# TYPE shmbus_broker_up gauge\n"
        << "shmbus_broker_up{domain=\"" << domain << "\"} 1\n"
        << "# HELP shmbus_broker_clients Connected clients.\n# TYPE shmbus_broker_clients gauge\n"
        << "shmbus_broker_clients{domain=\"" << domain << "\"} " << s->value("clients", 0) << "\n"
        << "# HELP shmbus_broker_uptime_seconds Seconds since the broker started.\n"
        << "# TYPE shmbus_broker_uptime_seconds gauge\n"
        << "shmbus_broker_uptime_seconds{domain=\"" << domain << "\"} " << s->value("uptime_s", 0.0) << "\n"
        << broker::prometheus_text(topics, domain);
  } else {
    std::vector<std::vector<std::string>> rows;
    for (const auto& t : topics)
      rows.push_back({t.value("name", std::string()), t.value("kind", std::string()), num(t, "published"),
                      num(t, "delivered"), num(t, "acked"), num(t, "dropped"), num(t, "redelivered"),
                      num(t, "queued"), num(t, "in_flight"), num(t, "subscribers")});
    std::cout << broker::format_table({"NAME", "KIND", "PUBLISHED", "DELIVERED", "ACKED", "DROPPED",
                                       "REDELIVERED", "QUEUED", "IN_FLIGHT", "SUBSCRIBERS"},
                                      rows);
  }
  return kExitOk;
}

int run_stop(const std::string& domain, bool purge) {
  long pid = 0;
  {
    auto c = connect_management(domain, "stop");
    if (!c && c.error().code() == Errc::unavailable && purge) {
      // Nobody runs the domain: purge it here, under the same lock a broker would take.
      auto n = broker::purge_domain(domain);
      if (!n) return fail("stop", n.error());
      std::cout << "no broker runs for domain " << in_quotes(domain) << "; purged " << *n << " segment(s)\n";
      return kExitOk;
    }
    if (!c) return fail("stop", c.error());
    auto s = c->request({{"op", "status"}});
    if (!s) return fail("stop", s.error());
    pid = s->value("pid", 0L);
    auto r = c->request({{"op", "stop"}, {"purge", purge}});
    if (!r) return fail("stop", r.error());
  }
  // Wait for the broker to be gone, so that what runs next (a new broker, a test) finds the domain free.
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0));
  if (pidfd >= 0) {
    pollfd p{pidfd, POLLIN, 0};
    const int n = ::poll(&p, 1, 10000);
    ::close(pidfd);
    if (n == 0) {
      std::cerr << "shmbus stop: the broker (pid " << pid << ") did not exit within 10 s\n";
      return kExitFailure;
    }
  }
  std::cout << "stopped the broker of domain " << in_quotes(domain) << " (pid " << pid << ")"
            << (purge ? "; purged its segments" : "; its topics stay for the next broker") << "\n";
  return kExitOk;
}

// ---- pub ----

int run_pub(const PubArgs& a) {
  if (auto st = check_topic_name(a.topic); !st) return fail("pub", st.error());
  if (!a.data && !a.count)
    return usage("pub", "give the message (DATA), '-' to read lines from stdin, or --count N");
  if (a.rate < 0 || !std::isfinite(a.rate))
    return usage("pub", "--rate must be a positive number of messages per second");
  std::vector<broker::OwnedAttr> owned;
  for (const std::string& kv : a.attrs) {
    auto p = broker::parse_attr(kv);
    if (!p) return usage("pub", "--attr " + in_quotes(kv) + " is not KEY=VALUE");
    owned.push_back(std::move(*p));
  }
  std::vector<Attr> attrs;  // views of `owned`, which no longer changes
  for (const auto& o : owned) attrs.push_back(o.view());
  install_interrupt_handlers();
  auto c = connect_data(a.domain, "pub");
  if (!c) return fail("pub", c.error());
  auto info = find_topic(c->domain(), a.topic);
  if (!info) return fail("pub", info.error());
  std::optional<Publisher> pub;
  std::optional<Producer> prod;
  if (info->kind == TopicKind::queue) {
    auto p = c->producer(a.topic);
    if (!p) return fail("pub", p.error());
    prod.emplace(std::move(p).value());
  } else {
    auto p = c->publisher(a.topic, {.timestamps = true});  // the command's JSON output shows them
    if (!p) return fail("pub", p.error());
    pub.emplace(std::move(p).value());
  }

  const bool from_stdin = a.data && *a.data == "-";
  const auto start = Clock::now();
  std::uint64_t sent = 0;
  std::uint64_t missed_by_some = 0;
  std::string msg;
  for (std::uint64_t i = 1; !a.count || i <= *a.count; ++i) {
    if (g_interrupted.load(std::memory_order_relaxed)) break;
    if (from_stdin) {
      if (!std::getline(std::cin, msg)) break;
    } else if (a.data) {
      msg = *a.data;
      if (!a.count && i > 1) break;  // DATA without --count: one message
    } else {
      msg = std::to_string(i);
    }
    if (a.size && msg.size() < *a.size) msg.append(*a.size - msg.size(), ' ');
    if (a.rate > 0) {
      const auto due = start + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(static_cast<double>(i - 1) / a.rate));
      std::this_thread::sleep_until(due);
    }
    // Queues: wait up to 5 s for room (back-pressure); a full stream subscriber under policy block: 1 s.
    const Status st = prod ? prod->publish(std::string_view(msg), attrs, 5s)
                           : pub->publish(std::string_view(msg), attrs, 1s);
    if (!st) {
      if (pub && st.error().code() == Errc::timed_out) {  // the other subscribers got it
        ++missed_by_some;
        continue;
      }
      std::cerr << "shmbus pub: message " << i << ": " << st.error().message() << "\n";
      if (sent != 0) std::cerr << "shmbus pub: " << sent << " message(s) were published before it\n";
      return exit_code_for(st.error());
    }
    ++sent;
  }
  if (missed_by_some != 0) {
    std::cerr << "shmbus pub: " << missed_by_some
              << " message(s) missed by subscribers whose rings stayed full\n";
    return kExitFailure;
  }
  return kExitOk;
}

// ---- sub / consume ----

namespace {

// Write one line and flush it; false if stdout is gone.
bool write_line(std::string_view line) {
  if (std::fwrite(line.data(), 1, line.size(), stdout) != line.size() || std::fputc('\n', stdout) == EOF ||
      std::fflush(stdout) != 0)
    return false;
  return true;
}

template <typename Message>
std::string render(const Message& m, const SubArgs& a, std::uint64_t missed,
                   std::optional<bool> redelivered) {
  if (a.format == "json")
    return broker::message_json(m.topic(), m.publisher(), m.seq(), m.timestamp_ns(), m.attrs(), m.bytes(),
                                missed, redelivered)
        .dump();
  return std::string(m.text());
}

}  // namespace

int run_sub(const SubArgs& a) {
  const char* cmd = a.queue ? "consume" : "sub";
  if (auto st = check_topic_name(a.topic); !st) return fail(cmd, st.error());
  if (a.timeout_s && (*a.timeout_s < 0 || !std::isfinite(*a.timeout_s)))
    return usage(cmd, "--timeout must be a number of seconds >= 0");
  install_interrupt_handlers();
  auto c = connect_data(a.domain, cmd);
  if (!c) return fail(cmd, c.error());
  std::optional<Subscriber> sub;
  std::optional<Consumer> con;
  if (a.queue) {
    auto r = c->consumer(a.topic);
    if (!r) return fail(cmd, r.error());
    con.emplace(std::move(r).value());
  } else {
    auto r = c->subscriber(a.topic);
    if (!r) return fail(cmd, r.error());
    sub.emplace(std::move(r).value());
  }
  std::optional<Clock::time_point> deadline;
  if (a.timeout_s)
    deadline = Clock::now() +
               std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(*a.timeout_s));
  std::uint64_t got = 0;
  std::uint64_t missed = 0;  // messages a stream dropped for us (drop-oldest) or we missed (block)
  while (!a.count || got < *a.count) {
    if (g_interrupted.load(std::memory_order_relaxed)) break;
    std::chrono::nanoseconds slice = 100ms;  // wake up now and then to see an interrupt
    if (deadline) {
      const auto left = *deadline - Clock::now();
      if (left <= Clock::duration::zero()) break;
      slice = std::min<std::chrono::nanoseconds>(slice, left);
    }
    if (sub) {
      auto s = sub->receive(slice);
      if (!s) {
        if (s.error().code() == Errc::timed_out) continue;
        return fail(cmd, s.error());
      }
      if (s->missed() != 0) {
        missed += s->missed();
        // In text mode the output alone cannot show a gap; in JSON each object carries "missed".
        if (a.format == "text")
          std::cerr << "shmbus sub: missed " << s->missed() << " message(s) before the next one (seq "
                    << s->seq() << ")\n";
      }
      if (!write_line(render(*s, a, s->missed(), std::nullopt))) {
        std::cerr << "shmbus sub: cannot write to stdout\n";
        return kExitFailure;
      }
    } else {
      auto d = con->receive(slice);
      if (!d) {
        if (d.error().code() == Errc::timed_out) continue;
        return fail(cmd, d.error());
      }
      // Ack only once the line is out: a consume killed before this point leaves the message unacked,
      // and the broker redelivers it. A failed write nacks it (the Delivery's destructor).
      if (!write_line(render(*d, a, 0, d->redelivered()))) {
        std::cerr << "shmbus consume: cannot write to stdout; the message goes back to the queue\n";
        return kExitFailure;
      }
      d->ack();
    }
    ++got;
  }
  const std::string missed_note =
      missed != 0 ? "; missed " + std::to_string(missed) + " message(s) the stream dropped" : std::string();
  if (a.count && got < *a.count) {
    if (g_interrupted.load(std::memory_order_relaxed))
      std::cerr << "shmbus " << cmd << ": interrupted after " << got << " of " << *a.count << " message(s)"
                << missed_note << "\n";
    else
      std::cerr << "shmbus " << cmd << ": timed out after " << got << " of " << *a.count << " message(s)"
                << missed_note << "\n";
    return kExitFailure;
  }
  if (missed != 0) {
    std::cerr << "shmbus " << cmd << ": received " << got << " message(s)" << missed_note << "\n";
    return kExitFailure;
  }
  return kExitOk;
}

}  // namespace shmbus::cli
