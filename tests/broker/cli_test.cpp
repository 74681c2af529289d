// The `shmbus` command end to end: every subcommand through the real binary, with its exit codes
// (0 ok, 1 failure, 3 not running, 64 usage, 65 bad data, 69 no broker, 78 config).
#include "broker_test_util.hpp"

namespace shmbus::btest {
namespace {

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

class CliTest : public ::testing::Test {
 protected:
  CliResult cli(const std::vector<std::string>& args, const std::string& in = "",
                std::vector<std::string> env = {}) {
    return run_cli(d, args, in, std::move(env));
  }
  void start_broker() {
    broker_.emplace(d);
    ASSERT_TRUE(broker_->wait_ready()) << broker_->log();
  }
  void create(const std::string& name, const std::string& kind, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"topic", "create", name, "--kind", kind};
    args.insert(args.end(), extra.begin(), extra.end());
    const CliResult r = cli(args);
    ASSERT_EQ(r.code, 0) << r;
  }
  // Start `shmbus args...` in the background, stdout and stderr to files.
  pid_t background(const std::vector<std::string>& args, const std::string& tag) {
    SpawnOptions o;
    o.stdout_path = d.path(tag + ".out");
    o.stderr_path = d.path(tag + ".err");
    return spawn_shmbus(args, o);
  }
  bool subscribers_reach(const std::string& topic, int n) {
    return eventually([&] {
      auto t = topic_entry(d, topic);
      return t && t->value("subscribers", -1) == n;
    });
  }

  TestDomain d;
  std::optional<BrokerProcess> broker_;
};

// ---- exit codes without a broker ----

TEST_F(CliTest, StatusWhenNotRunningExits3) {
  CliResult r = cli({"status"});
  EXPECT_EQ(r.code, 3) << r;
  EXPECT_NE(r.err.find("no broker runs for domain \"" + d.domain() + "\""), std::string::npos) << r;
  r = cli({"status", "--json"});
  EXPECT_EQ(r.code, 3) << r;
  const json j = json::parse(r.out);
  EXPECT_EQ(j.value("running", true), false);
  EXPECT_EQ(j.value("domain", std::string()), d.domain());
}

TEST_F(CliTest, StatusNeverStartsABroker) {
  const CliResult r = cli({"status"}, "", {"SHMBUS_AUTOSTART=1"});
  EXPECT_EQ(r.code, 3) << r;
  std::this_thread::sleep_for(200ms);
  EXPECT_FALSE(exists(d.socket()));
}

TEST_F(CliTest, NoBrokerWithAutostartOffExits69) {
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"pub", "t", "x"},
                                             {"sub", "t", "--timeout", "1"},
                                             {"consume", "t", "--timeout", "1"},
                                             {"topic", "create", "t", "--kind", "stream"},
                                             {"topic", "delete", "t"},
                                             {"topics"},
                                             {"stats"},
                                             {"stop"}}) {
    const CliResult r = cli(args);
    EXPECT_EQ(r.code, 69) << args[0] << ": " << r;
    EXPECT_NE(r.err.find("no broker runs"), std::string::npos) << r;
  }
}

TEST_F(CliTest, UsageErrorsExit64) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {},
           {"frobnicate"},
           {"status", "--bogus"},
           {"pub"},
           {"pub", "t"},
           {"pub", "t", "x", "--attr", "novalue"},
           {"pub", "t", "x", "--rate", "-3"},
           {"sub", "t", "--format", "xml"},
           {"sub", "t", "--timeout", "soon"},
           {"stats", "--format", "csv"},
           {"topic"},
           {"topic", "create", "t"},
           {"topic", "create", "t", "--kind", "pipe"},
           {"topic", "create", "t", "--kind", "stream", "--overflow", "spill"},
           {"status", "--domain", "bad.domain"},
           {"broker", "--log-level", "loud"}}) {
    const CliResult r = cli(args);
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    EXPECT_EQ(r.code, 64) << joined << ": " << r;
  }
}

TEST_F(CliTest, HelpExits0Everywhere) {
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"--help"},
                                             {"broker", "--help"},
                                             {"status", "--help"},
                                             {"topics", "--help"},
                                             {"topic", "--help"},
                                             {"topic", "create", "--help"},
                                             {"topic", "delete", "--help"},
                                             {"stats", "--help"},
                                             {"stop", "--help"},
                                             {"pub", "--help"},
                                             {"sub", "--help"},
                                             {"consume", "--help"}}) {
    const CliResult r = cli(args);
    EXPECT_EQ(r.code, 0) << args[0] << ": " << r;
    if (args[0] != "--help") {
      EXPECT_NE(r.out.find("--domain"), std::string::npos) << r;
    }
  }
  EXPECT_NE(cli({"stats", "--help"}).out.find("in_flight"), std::string::npos);
}

TEST_F(CliTest, BadTopicNamesExit65WithTheReason) {
  CliResult r = cli({"pub", "a..b", "x"});
  EXPECT_EQ(r.code, 65) << r;
  EXPECT_NE(r.err.find("empty token at offset 2"), std::string::npos) << r;
  r = cli({"sub", "sensors.*", "--timeout", "1"});
  EXPECT_EQ(r.code, 65) << r;
  EXPECT_NE(r.err.find("wildcard"), std::string::npos) << r;
  r = cli({"consume", "a b", "--timeout", "1"});
  EXPECT_EQ(r.code, 65) << r;
  r = cli({"topic", "create", "x/y", "--kind", "queue"});
  EXPECT_EQ(r.code, 65) << r;
}

// ---- with a broker ----

TEST_F(CliTest, StatusWhenRunningExits0) {
  start_broker();
  CliResult r = cli({"status"});
  EXPECT_EQ(r.code, 0) << r;
  EXPECT_NE(r.out.find(std::to_string(broker_->pid())), std::string::npos) << r;
  r = cli({"status", "--json"});
  ASSERT_EQ(r.code, 0) << r;
  const json j = json::parse(r.out);
  EXPECT_EQ(j.value("running", false), true);
  EXPECT_EQ(j.value("pid", 0), broker_->pid());
  EXPECT_EQ(j.value("domain", std::string()), d.domain());
  EXPECT_EQ(j.value("autostart", true), false);
  // --domain picks another domain, which has no broker.
  r = cli({"status", "--domain", d.domain() + "other"});
  EXPECT_EQ(r.code, 3) << r;
}

TEST_F(CliTest, TopicCreateListDelete) {
  start_broker();
  CliResult r =
      cli({"topic", "create", "orders.new", "--kind", "queue", "--depth", "100", "--max-size", "512"});
  ASSERT_EQ(r.code, 0) << r;
  EXPECT_NE(r.out.find("created queue \"orders.new\""), std::string::npos) << r;
  create("ticks", "stream", {"--overflow", "block", "--max-subscribers", "3"});
  r = cli({"topic", "create", "ticks", "--kind", "stream"});
  EXPECT_EQ(r.code, 1) << r;
  EXPECT_NE(r.err.find("already exists"), std::string::npos) << r;
  r = cli({"topic", "create", "huge", "--kind", "stream", "--max-subscribers", "5000"});
  EXPECT_EQ(r.code, 65) << r;

  r = cli({"topics"});
  ASSERT_EQ(r.code, 0) << r;
  const auto table = lines(r.out);
  ASSERT_EQ(table.size(), 3u) << r;
  EXPECT_EQ(table[0].rfind("NAME", 0), 0u) << r;
  EXPECT_NE(r.out.find("orders.new"), std::string::npos);
  r = cli({"topics", "--json"});
  ASSERT_EQ(r.code, 0) << r;
  const json j = json::parse(r.out);
  ASSERT_EQ(j.size(), 2u);
  for (const auto& t : j) {
    if (t["name"] == "orders.new") {
      EXPECT_EQ(t["depth"], 128);
      EXPECT_EQ(t["max_size"], 512);
    } else {
      EXPECT_EQ(t["overflow"], "block");
      EXPECT_EQ(t["max_subscribers"], 3);
    }
  }
  r = cli({"topic", "delete", "ticks"});
  EXPECT_EQ(r.code, 0) << r;
  r = cli({"topic", "delete", "ticks"});
  EXPECT_EQ(r.code, 1) << r;
  EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r;
  EXPECT_EQ(json::parse(cli({"topics", "--json"}).out).size(), 1u);
}

TEST_F(CliTest, PubSubAcrossProcesses) {
  start_broker();
  create("sensors.temp", "stream");
  const pid_t sub = background({"sub", "sensors.temp", "--count", "5", "--timeout", "20"}, "sub");
  ASSERT_TRUE(subscribers_reach("sensors.temp", 1)) << read_file(d.path("sub.err"));
  const CliResult p = cli({"pub", "sensors.temp", "--count", "5"});
  EXPECT_EQ(p.code, 0) << p;
  const ExitStatus st = wait_exit(sub, 20s);
  EXPECT_TRUE(st.exited && st.code == 0) << read_file(d.path("sub.err"));
  EXPECT_EQ(lines(read_file(d.path("sub.out"))), (std::vector<std::string>{"1", "2", "3", "4", "5"}));
  EXPECT_TRUE(subscribers_reach("sensors.temp", 0)) << "the subscriber leaves its slot on exit";
}

TEST_F(CliTest, SubJsonCarriesAttributesSizeAndSequence) {
  start_broker();
  create("t", "stream");
  const pid_t sub = background({"sub", "t", "--count", "2", "--timeout", "20", "--format", "json"}, "sub");
  ASSERT_TRUE(subscribers_reach("t", 1));
  const CliResult p = cli({"pub", "t", "hello", "--count", "2", "--size", "8", "--attr", "region=eu",
                           "--attr", "prio=5", "--attr", "neg=-7", "--attr", "ver=1.5"});
  ASSERT_EQ(p.code, 0) << p;
  ASSERT_TRUE(wait_exit(sub, 20s).code == 0) << read_file(d.path("sub.err"));
  const auto out = lines(read_file(d.path("sub.out")));
  ASSERT_EQ(out.size(), 2u);
  const json m = json::parse(out[0]);
  EXPECT_EQ(m["topic"], "t");
  EXPECT_EQ(m["seq"], 1);
  EXPECT_EQ(json::parse(out[1])["seq"], 2);
  EXPECT_EQ(m["payload"], "hello   ");
  EXPECT_EQ(m["size"], 8);
  EXPECT_EQ(m["missed"], 0);
  EXPECT_EQ(m["attrs"]["region"], "eu");
  EXPECT_EQ(m["attrs"]["prio"], 5);
  EXPECT_EQ(m["attrs"]["neg"], -7);
  EXPECT_EQ(m["attrs"]["ver"], "1.5");
  EXPECT_TRUE(m["publisher"].is_number_unsigned());
  EXPECT_FALSE(m.contains("redelivered"));
}

TEST_F(CliTest, BinaryPayloadIsPrintedAsBase64) {
  start_broker();
  create("bin", "stream");
  const pid_t sub = background({"sub", "bin", "--count", "1", "--timeout", "20", "--format", "json"}, "sub");
  ASSERT_TRUE(subscribers_reach("bin", 1));
  const CliResult p = cli({"pub", "bin", "-"}, std::string("\xff\xfe\x01", 3) + "\n");
  ASSERT_EQ(p.code, 0) << p;
  ASSERT_EQ(wait_exit(sub, 20s).code, 0);
  const json m = json::parse(read_file(d.path("sub.out")));
  EXPECT_FALSE(m.contains("payload"));
  EXPECT_EQ(m["payload_b64"], "//4B");
  EXPECT_EQ(m["size"], 3);
}

TEST_F(CliTest, SubTimeoutExits1AfterPrintingWhatArrived) {
  start_broker();
  create("t", "stream");
  const pid_t sub = background({"sub", "t", "--count", "5", "--timeout", "2"}, "sub");
  ASSERT_TRUE(subscribers_reach("t", 1));
  ASSERT_EQ(cli({"pub", "t", "--count", "2"}).code, 0);
  const ExitStatus st = wait_exit(sub, 20s);
  EXPECT_TRUE(st.exited) << read_file(d.path("sub.err"));
  EXPECT_EQ(st.code, 1);
  EXPECT_EQ(lines(read_file(d.path("sub.out"))), (std::vector<std::string>{"1", "2"}));
  EXPECT_NE(read_file(d.path("sub.err")).find("timed out after 2 of 5"), std::string::npos);
}

// A subscriber that falls behind a drop-oldest stream must say so: in text mode the lines alone cannot
// show a gap (on e1268a1: 17 of 100 arrived, nothing said, exit 0).
TEST_F(CliTest, SubReportsMissedMessagesOnStderrAndInItsExitStatus) {
  start_broker();
  create("t", "stream", {"--depth", "2"});
  const pid_t sub = background({"sub", "t", "--count", "2", "--timeout", "20"}, "sub");
  ASSERT_TRUE(subscribers_reach("t", 1));
  ::kill(sub, SIGSTOP);  // fall behind: the ring keeps only the last 2 of 10
  ASSERT_EQ(cli({"pub", "t", "--count", "10"}).code, 0);
  ::kill(sub, SIGCONT);
  const ExitStatus st = wait_exit(sub, 20s);
  const std::string err = read_file(d.path("sub.err"));
  EXPECT_TRUE(st.exited) << err;
  EXPECT_EQ(st.code, 1) << err;
  EXPECT_EQ(lines(read_file(d.path("sub.out"))), (std::vector<std::string>{"9", "10"}));
  EXPECT_NE(err.find("missed 8 message(s) before the next one (seq 9)"), std::string::npos) << err;
  EXPECT_NE(err.find("received 2 message(s); missed 8 message(s) the stream dropped"), std::string::npos)
      << err;
}

TEST_F(CliTest, SubWithoutCountRunsUntilTimeoutAndExits0) {
  start_broker();
  create("t", "stream");
  const auto t0 = Clock::now();
  const CliResult r = cli({"sub", "t", "--timeout", "0.5"});
  EXPECT_EQ(r.code, 0) << r;
  EXPECT_GE(Clock::now() - t0, 500ms);
}

TEST_F(CliTest, SubWithoutCountEndsOnSigintWithExit0) {
  start_broker();
  create("t", "stream");
  const pid_t sub = background({"sub", "t"}, "sub");
  ASSERT_TRUE(subscribers_reach("t", 1));
  ::kill(sub, SIGINT);
  const ExitStatus st = wait_exit(sub, 10s);
  EXPECT_TRUE(st.exited && st.code == 0) << read_file(d.path("sub.err"));
}

TEST_F(CliTest, ConsumeTakesEachMessageOnceAndAcksIt) {
  start_broker();
  create("jobs", "queue");
  ASSERT_EQ(cli({"pub", "jobs", "-"}, "a\nb\nc\n").code, 0);
  ASSERT_EQ(cli({"pub", "jobs", "--count", "2"}).code, 0);
  CliResult r = cli({"consume", "jobs", "--count", "4", "--timeout", "5", "--format", "json"});
  ASSERT_EQ(r.code, 0) << r;
  const auto out = lines(r.out);
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(json::parse(out[0])["payload"], "a");
  EXPECT_EQ(json::parse(out[0])["redelivered"], false);
  EXPECT_EQ(json::parse(out[3])["payload"], "1");
  r = cli({"consume", "jobs", "--count", "1", "--timeout", "5"});
  EXPECT_EQ(r.code, 0) << r;
  EXPECT_EQ(r.out, "2\n");
  r = cli({"consume", "jobs", "--count", "1", "--timeout", "0.3"});
  EXPECT_EQ(r.code, 1) << r;
  const json t = *topic_entry(d, "jobs");
  EXPECT_EQ(t["published"], 5);
  EXPECT_EQ(t["acked"], 5);
  EXPECT_EQ(t["in_flight"], 0);
}

TEST_F(CliTest, ConsumeThatCannotWriteItsLinePutsTheMessageBack) {
  start_broker();
  create("jobs", "queue");
  ASSERT_EQ(cli({"pub", "jobs", "only"}).code, 0);
  SpawnOptions o;
  o.stdout_path = "/dev/full";  // every write fails with ENOSPC
  o.stderr_path = d.path("full.err");
  const pid_t c = spawn_shmbus({"consume", "jobs", "--count", "1", "--timeout", "5"}, o);
  const ExitStatus st = wait_exit(c, 20s);
  EXPECT_TRUE(st.exited && st.code == 1) << read_file(d.path("full.err"));
  const CliResult r = cli({"consume", "jobs", "--count", "1", "--timeout", "5", "--format", "json"});
  ASSERT_EQ(r.code, 0) << r;
  const json m = json::parse(r.out);
  EXPECT_EQ(m["payload"], "only");
  EXPECT_EQ(m["redelivered"], true);
}

TEST_F(CliTest, OversizeMessageExits65) {
  start_broker();
  create("small", "stream", {"--max-size", "16"});
  create("smallq", "queue", {"--max-size", "16"});
  CliResult r = cli({"pub", "small", "--count", "1", "--size", "17"});
  EXPECT_EQ(r.code, 65) << r;
  EXPECT_NE(r.err.find("exceeds the max size"), std::string::npos) << r;
  r = cli({"pub", "smallq", std::string(100, 'x')});
  EXPECT_EQ(r.code, 65) << r;
  r = cli({"pub", "smallq", std::string(16, 'x')});
  EXPECT_EQ(r.code, 0) << r;
}

TEST_F(CliTest, PubToAMissingTopicExits1) {
  start_broker();
  const CliResult r = cli({"pub", "nowhere", "x"});
  EXPECT_EQ(r.code, 1) << r;
  EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r;
}

TEST_F(CliTest, SubscribingToAQueueIsRefused) {
  start_broker();
  create("jobs", "queue");
  const CliResult r = cli({"sub", "jobs", "--timeout", "1"});
  EXPECT_EQ(r.code, 65) << r;
  EXPECT_NE(r.err.find("queue"), std::string::npos) << r;
}

TEST_F(CliTest, PubRatePacesMessages) {
  start_broker();
  create("jobs", "queue");
  const auto t0 = Clock::now();
  ASSERT_EQ(cli({"pub", "jobs", "--count", "6", "--rate", "20"}).code, 0);
  EXPECT_GE(Clock::now() - t0, 250ms);  // 5 gaps of 50 ms
  EXPECT_EQ(topic_entry(d, "jobs")->value("queued", 0), 6);
}

TEST_F(CliTest, StatsInEveryFormat) {
  start_broker();
  create("jobs", "queue");
  ASSERT_EQ(cli({"pub", "jobs", "--count", "3"}).code, 0);
  CliResult r = cli({"stats"});
  ASSERT_EQ(r.code, 0) << r;
  EXPECT_NE(r.out.find("IN_FLIGHT"), std::string::npos) << r;
  r = cli({"stats", "--format", "json"});
  ASSERT_EQ(r.code, 0) << r;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["domain"], d.domain());
  EXPECT_EQ(j["topics"][0]["published"], 3);
  EXPECT_EQ(j["topics"][0]["queued"], 3);
  EXPECT_EQ(j["topics"][0]["in_flight"], 3);
  r = cli({"stats", "--format", "prometheus"});
  ASSERT_EQ(r.code, 0) << r;
  EXPECT_NE(r.out.find("# TYPE shmbus_topic_published_total counter"), std::string::npos) << r;
  EXPECT_NE(r.out.find("shmbus_topic_published_total{domain=\"" + d.domain() +
                       "\",topic=\"jobs\",kind=\"queue\"} 3"),
            std::string::npos)
      << r;
  EXPECT_NE(r.out.find("shmbus_broker_up{domain=\"" + d.domain() + "\"} 1"), std::string::npos) << r;
}

TEST_F(CliTest, StopEndsTheBrokerThenStatusExits3) {
  start_broker();
  create("t", "stream");
  CliResult r = cli({"stop"});
  EXPECT_EQ(r.code, 0) << r;
  EXPECT_NE(r.out.find("pid " + std::to_string(broker_->pid())), std::string::npos) << r;
  EXPECT_NE(r.out.find("its topics stay for the next broker"), std::string::npos) << r;
  const ExitStatus st = broker_->wait(5s);
  EXPECT_TRUE(st.exited && st.code == 0) << broker_->log();
  EXPECT_EQ(d.segments().size(), 2u);  // the directory and the topic
  r = cli({"status"});
  EXPECT_EQ(r.code, 3) << r;
}

TEST_F(CliTest, StopPurgeRemovesTheSegmentsWithOrWithoutABroker) {
  start_broker();
  create("t", "queue");
  CliResult r = cli({"stop", "--purge"});
  EXPECT_EQ(r.code, 0) << r;
  EXPECT_NE(r.out.find("purged its segments"), std::string::npos) << r;
  EXPECT_TRUE(broker_->wait(5s).exited) << broker_->log();
  EXPECT_TRUE(d.segments().empty());
  // No broker: `stop --purge` purges under the domain lock itself; plain `stop` says nobody runs.
  start_broker();
  create("u", "queue");
  ASSERT_EQ(cli({"stop"}).code, 0);
  ASSERT_TRUE(broker_->wait(5s).exited);
  ASSERT_EQ(d.segments().size(), 2u);
  r = cli({"stop"});
  EXPECT_EQ(r.code, 69) << r;
  EXPECT_EQ(d.segments().size(), 2u);
  r = cli({"stop", "--purge"});
  EXPECT_EQ(r.code, 0) << r;
  EXPECT_NE(r.out.find("purged 2 segment(s)"), std::string::npos) << r;
  EXPECT_TRUE(d.segments().empty());
  EXPECT_FALSE(exists(d.lock_file()))
      << "a purged domain leaves no lock file (it would shut other users out)";
}

TEST_F(CliTest, DataCommandsAutostartABrokerUnlessDisabled) {
  CliResult r = cli({"topic", "create", "auto", "--kind", "stream"}, "", {"SHMBUS_AUTOSTART=1"});
  ASSERT_EQ(r.code, 0) << r;
  r = cli({"status", "--json"});
  ASSERT_EQ(r.code, 0) << r;
  const json s = json::parse(r.out);
  EXPECT_EQ(s["autostart"], true);
  const pid_t pid = s["pid"].get<pid_t>();
  EXPECT_EQ(d.broker_pid_from_file(), pid);
  r = cli({"stop"});
  EXPECT_EQ(r.code, 0) << r;
  EXPECT_FALSE(process_running(pid));
  r = cli({"pub", "auto", "x"});  // SHMBUS_AUTOSTART=0 from the fixture
  EXPECT_EQ(r.code, 69) << r;
}

}  // namespace
}  // namespace shmbus::btest
