// `shmbus`: the broker and the management and shell commands of a bus domain, in one binary.
// The command line is parsed with CLI11; commands.cpp does the work. Parse errors exit 64 (usage).
#include <CLI/CLI.hpp>
#include <iostream>

#include "commands.hpp"
#include "config.hpp"
#include "shmbus/paths.hpp"

namespace {

using namespace shmbus::cli;

// --domain on every subcommand (all share one variable).
void add_domain(CLI::App* app, std::string& domain) {
  app->add_option("--domain", domain, "bus domain ($SHMBUS_DOMAIN, else \"default\")")
      ->capture_default_str()
      ->check([](const std::string& d) {
        auto st = shmbus::check_domain_name(d);
        return st ? std::string() : st.error().message();
      });
}

const char* kExitCodes =
    "Exit codes: 0 ok, 1 runtime failure, 3 not running (status), 64 usage, 65 bad data (invalid name, "
    "oversize "
    "message), 69 no broker and autostart off, 78 config error.";

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"shmbus: a shared-memory message bus for the processes of one host.", "shmbus"};
  app.footer(kExitCodes);
  app.fallthrough();
  app.require_subcommand(1);
  std::string domain = shmbus::default_domain();

  // broker
  BrokerArgs broker;
  std::uint32_t idle_exit = 0;
  auto* b = app.add_subcommand("broker", "Run the broker (supervisor) of a domain in the foreground.");
  add_domain(b, domain);
  b->add_option("-c,--config", broker.config, "TOML configuration file (a bad or missing one exits 78)");
  auto* autostart = b->add_flag("--autostart", broker.autostart,
                                "started by a client: exit after --idle-exit s without clients");
  b->add_option("--idle-exit", idle_exit,
                "seconds without clients before an autostarted broker exits (default 10, "
                "or the config's idle_exit_s)")
      ->check(CLI::Range(1u, 7u * 24 * 3600))
      ->needs(autostart);
  b->add_flag("--purge-on-exit", broker.purge_on_exit,
              "remove every topic (and its queued messages) when the broker exits; by default topics stay "
              "for the next broker");
  bool keep_segments = false;  // the default since topics outlive the broker; accepted for old scripts
  b->add_flag("--keep-segments", keep_segments, "(the default; kept for compatibility)")->group("");
  b->add_option("--log-level", broker.log_level,
                "trace, debug, info, warn, error, critical or off (default: the "
                "config's log_level, else info)")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  b->add_flag("--check-config", broker.check_config,
              "only parse -c FILE: print \"config OK: N topics\" or the error "
              "(exit 78)");

  // status
  bool status_json = false;
  auto* st = app.add_subcommand("status", "Say whether the domain's broker runs (exit 0) or not (exit 3).");
  add_domain(st, domain);
  st->add_flag("--json", status_json, "one JSON object");

  // topics
  bool topics_json = false;
  auto* tp = app.add_subcommand("topics", "List the domain's topics.");
  add_domain(tp, domain);
  tp->add_flag("--json", topics_json, "a JSON array, one object per topic");

  // topic create / delete
  auto* topic = app.add_subcommand("topic", "Create or delete a topic.");
  topic->require_subcommand(1);
  add_domain(topic, domain);
  TopicCreateArgs create;
  auto* tc = topic->add_subcommand(
      "create", "Create a topic (starts a broker if none runs, unless SHMBUS_AUTOSTART=0).");
  add_domain(tc, domain);
  tc->add_option("name", create.name, "topic name: tokens of [A-Za-z0-9_-] separated by '.'")->required();
  tc->add_option("--kind", create.kind, "stream (pub/sub) or queue (competing consumers)")
      ->required()
      ->check(CLI::IsMember({"stream", "queue"}));
  tc->add_option("--depth", create.depth,
                 "messages per subscriber ring (stream) or in the queue; rounded up to 2^k");
  tc->add_option("--max-size", create.max_size, "largest payload in bytes");
  tc->add_option("--overflow", create.overflow,
                 "streams: drop-oldest (subscriber told what it missed) or block")
      ->check(CLI::IsMember({"drop-oldest", "block"}));
  tc->add_option("--max-subscribers", create.max_subscribers, "streams: subscribers at once (1 to 4096)");
  tc->add_option("--max-publishers", create.max_publishers, "streams: publishers at once (1 to 4096)");
  std::string delete_name;
  auto* td = topic->add_subcommand("delete", "Delete a topic and its segment.");
  add_domain(td, domain);
  td->add_option("name", delete_name, "topic name")->required();

  // stats
  std::string stats_format = "table";
  auto* sa = app.add_subcommand("stats",
                                "Per-topic counters. published, delivered, acked, dropped, redelivered count "
                                "since the topic was created; "
                                "queued is what waits in the rings now; in_flight is what was accepted and "
                                "is not finished with: for a queue, "
                                "queued plus messages taken and not yet acked (delivered - acked - "
                                "redelivered), for a stream, queued.");
  add_domain(sa, domain);
  sa->add_option("--format", stats_format, "table, json or prometheus")
      ->capture_default_str()
      ->check(CLI::IsMember({"table", "json", "prometheus"}));

  // stop
  auto* sp = app.add_subcommand(
      "stop",
      "Stop the domain's broker (and wait until it has exited). Topics and queued messages stay for the "
      "next broker.");
  add_domain(sp, domain);
  bool stop_purge = false;
  sp->add_flag("--purge", stop_purge,
               "also remove every topic of the domain and the messages queued in them (works when no broker "
               "runs, too)");

  // pub
  PubArgs pub;
  std::string pub_data;
  std::uint64_t pub_count = 0;
  std::size_t pub_size = 0;
  auto* pb = app.add_subcommand("pub", "Publish to a stream or produce to a queue.");
  add_domain(pb, domain);
  pb->add_option("topic", pub.topic, "topic or queue name")->required();
  auto* pub_data_opt = pb->add_option("data", pub_data, "the message; '-' reads stdin, one message per line");
  auto* pub_count_opt =
      pb->add_option("--count", pub_count,
                     "send N messages: DATA N times, or without DATA message i = decimal text of i (1..N)");
  pb->add_option("--rate", pub.rate, "messages per second (default: as fast as possible)")
      ->check(CLI::PositiveNumber);
  auto* pub_size_opt = pb->add_option("--size", pub_size, "pad each message with spaces to BYTES");
  pb->add_option("--attr", pub.attrs,
                 "attribute KEY=VALUE (an integer VALUE is an int attribute); repeatable")
      ->allow_extra_args(false);

  // sub / consume
  SubArgs sub;
  SubArgs con;
  con.queue = true;
  double sub_timeout = 0;
  double con_timeout = 0;
  std::uint64_t sub_count = 0;
  std::uint64_t con_count = 0;
  auto* sb = app.add_subcommand("sub", "Subscribe to a stream and print each message on its own line.");
  auto* cs = app.add_subcommand("consume", "Consume from a queue: print each message, then ack it.");
  struct Receiver {
    CLI::App* app;
    SubArgs* args;
    std::uint64_t* count;
    double* timeout;
    CLI::Option* count_opt = nullptr;
    CLI::Option* timeout_opt = nullptr;
  };
  Receiver receivers[] = {{sb, &sub, &sub_count, &sub_timeout}, {cs, &con, &con_count, &con_timeout}};
  for (Receiver& r : receivers) {
    add_domain(r.app, domain);
    r.app->add_option("topic", r.args->topic, r.args->queue ? "queue name" : "stream name")->required();
    r.count_opt =
        r.app->add_option("--count", *r.count, "exit 0 after N messages (exit 1 if the timeout comes first)");
    r.timeout_opt =
        r.app->add_option("--timeout", *r.timeout, "give up after SEC seconds (default: run until SIGINT)")
            ->check(CLI::NonNegativeNumber);
    r.app
        ->add_option(
            "--format", r.args->format,
            std::string("text (the payload) or json (one object per line: topic, publisher, seq, attrs, "
                        "size, payload or payload_b64, missed") +
                (r.args->queue ? ", redelivered)" : ")"))
        ->capture_default_str()
        ->check(CLI::IsMember({"text", "json"}));
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }

  if (b->parsed()) {
    broker.domain = domain;
    if (idle_exit != 0) broker.idle_exit_s = idle_exit;
    return run_broker(broker);
  }
  if (st->parsed()) return run_status(domain, status_json);
  if (tp->parsed()) return run_topics(domain, topics_json);
  if (tc->parsed()) {
    create.domain = domain;
    return run_topic_create(create);
  }
  if (td->parsed()) return run_topic_delete(domain, delete_name);
  if (sa->parsed()) return run_stats(domain, stats_format);
  if (sp->parsed()) return run_stop(domain, stop_purge);
  if (pb->parsed()) {
    pub.domain = domain;
    if (pub_data_opt->count() != 0) pub.data = pub_data;
    if (pub_count_opt->count() != 0) pub.count = pub_count;
    if (pub_size_opt->count() != 0) pub.size = pub_size;
    return run_pub(pub);
  }
  for (Receiver& r : receivers) {
    if (!r.app->parsed()) continue;
    r.args->domain = domain;
    if (r.count_opt->count() != 0) r.args->count = *r.count;
    if (r.timeout_opt->count() != 0) r.args->timeout_s = *r.timeout;
    return run_sub(*r.args);
  }
  return kExitUsage;
}
