// Where the core meets the world (issue 7): identity across pid namespaces, request ids on the control
// connection, waiters killed while parked, nacks on a full queue, exact counters through redelivery, and
// queued messages that outlive the broker. Each test is a regression test for a loss or a false death
// found on e1268a1.
//
// As in client_integration_test: children are forked while the test process holds no Client.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <thread>

#include "../shm/test_util.hpp"
#include "bus_fixture.hpp"
#include "shmbus/shmbus.hpp"

#ifndef SHMBUS_TEST_CONSUMER
#error "SHMBUS_TEST_CONSUMER (path of shmbus-test-consumer) must be defined"
#endif

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using test::Bus;
using test::fork_child;
using test::shared_block;
using test::wait_child;
using test::wait_until;

TopicOptions queue(std::uint64_t depth) {
  return {.kind = TopicKind::queue, .depth = depth, .max_size = 64};
}
TopicOptions stream(std::uint64_t depth) {
  return {.kind = TopicKind::stream, .depth = depth, .max_size = 64};
}

nlohmann::json topic_stats(Client& c, const std::string& name) {
  auto r = c.request({{"op", "topics"}});
  EXPECT_TRUE(r) << (r ? "" : r.error().message());
  if (!r) return {};
  for (const auto& t : (*r)["topics"])
    if (t.value("name", std::string()) == name) return t;
  return {};
}

std::string read_all(const std::string& path) {
  std::string text;
  if (FILE* f = std::fopen(path.c_str(), "re")) {
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
    std::fclose(f);
  }
  return text;
}

// True if this process may create pid namespaces (root, or unprivileged user namespaces).
bool can_unshare_pid() {
  const pid_t pid = fork();
  if (pid == 0) _exit(unshare(CLONE_NEWPID) == 0 ? 0 : 1);
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 && access("/usr/bin/unshare", X_OK) == 0;
}

// Run argv with stdout and stderr to `out`; returns the pid.
pid_t spawn(const std::vector<std::string>& args, const std::string& out) {
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

// ---- identity across pid namespaces ----

// A consumer in its own pid namespace (a container sharing /dev/shm and the runtime directory) holds an
// unacked message past several broker sweeps. It is alive: nobody else may get the message, and its ack
// must work. On e1268a1 the sweep took it for dead (it stamped its namespace's pid 1), redelivered the
// message to another consumer, and the ack aborted the process.
TEST(PidNamespaceTest, ConsumerInItsOwnPidNamespaceKeepsItsMessageAndAcks) {
  if (!can_unshare_pid()) GTEST_SKIP() << "cannot create pid namespaces here (needs root)";
  Bus bus;
  bus.create_topics({{"jobs", queue(8)}},
                    [](Client& c) { ASSERT_TRUE(c.producer("jobs")->publish(std::string_view("job-1"))); });
  const std::string out = bus.runtime() + "/ns-consumer.out";
  const std::string hold = bus.runtime() + "/release";
  const pid_t ns =
      spawn({"/usr/bin/unshare", "--pid", "--fork", "--mount-proc", SHMBUS_TEST_CONSUMER, "jobs", hold}, out);
  ASSERT_TRUE(wait_until([&] { return read_all(out).find("got job-1") != std::string::npos; }, 20s))
      << read_all(out);
  EXPECT_NE(read_all(out).find("pid 1\n"), std::string::npos)
      << "not pid 1 of a new namespace: " << read_all(out);
  {
    Client c = bus.client();
    auto other = c.consumer("jobs").value();
    // Three dead-owner sweeps (one a second) pass while the namespaced consumer holds the message.
    auto d = other.receive(3500ms);
    EXPECT_FALSE(d) << "the message was redelivered while its consumer still worked on it";
    const auto t = topic_stats(c, "jobs");
    EXPECT_EQ(t.value("redelivered", -1), 0) << t;
    EXPECT_EQ(t.value("in_flight", -1), 1) << t;
  }
  std::fclose(std::fopen(hold.c_str(), "w"));
  const auto r = wait_child(ns, 30s);
  EXPECT_TRUE(r.exited && r.code == 0) << "exit " << r.code << " signal " << r.signal << "\n"
                                       << read_all(out);
  EXPECT_NE(read_all(out).find("acked"), std::string::npos) << read_all(out);
  Client c = bus.client();
  EXPECT_TRUE(wait_until([&] { return topic_stats(c, "jobs").value("acked", 0) == 1; }, 5s)) << bus.log();
  EXPECT_EQ(topic_stats(c, "jobs").value("in_flight", -1), 0);
}

// A broker that cannot see its client's pid namespace (SO_PEERCRED pid 0) refuses it with a reason.
TEST(PidNamespaceTest, BrokerInAChildNamespaceRefusesAClientItCannotSee) {
  if (!can_unshare_pid()) GTEST_SKIP() << "cannot create pid namespaces here (needs root)";
  char tmpl[] = "/tmp/shmbus-ns-XXXXXX";
  const std::string rt = mkdtemp(tmpl);
  const std::string domain = "nsb" + std::to_string(getpid());
  setenv("SHMBUS_RUNTIME_DIR", rt.c_str(), 1);
  setenv("SHMBUS_DOMAIN", domain.c_str(), 1);
  setenv("SHMBUS_AUTOSTART", "0", 1);
  const std::string log = rt + "/broker.log";
  // --kill-child: the broker is pid 1 of its namespace, which ignores our SIGTERM; it dies with unshare.
  const pid_t b = spawn({"/usr/bin/unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL",
                         SHMBUS_BIN, "broker", "--domain", domain},
                        log);
  const auto sock = control::socket_path(domain).value();
  ASSERT_TRUE(
      wait_until([&] { return read_all(log).find("listening on " + sock) != std::string::npos; }, 10s))
      << read_all(log);
  auto c = Client::connect();
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code(), Errc::unavailable);
  EXPECT_NE(c.error().message().find("pid namespace"), std::string::npos) << c.error().message();
  kill(b, SIGKILL);
  wait_child(b, 10s);
  std::system(("rm -rf '" + rt + "'; rm -f /dev/shm/shmbus." + domain + ".*").c_str());
}

// Owner ids are pids of one pid namespace: a broker started in another one (a container's, after the
// host's died) must not adopt the domain, where it would take live clients for dead (ESRCH) and hand
// their unacked messages to others.
TEST(PidNamespaceTest, BrokerInAnotherPidNamespaceRefusesToAdoptTheDomain) {
  if (!can_unshare_pid()) GTEST_SKIP() << "cannot create pid namespaces here (needs root)";
  Bus bus;
  bus.create_topics({{"jobs", queue(8)}},
                    [](Client& c) { ASSERT_TRUE(c.producer("jobs")->publish(std::string_view("kept"))); });
  bus.stop_broker(SIGKILL);
  const std::string out = bus.runtime() + "/ns-broker.log";
  const pid_t b = spawn({"/usr/bin/unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL",
                         SHMBUS_BIN, "broker", "--domain", bus.domain()},
                        out);
  const auto r = wait_child(b, 20s);
  EXPECT_TRUE(r.exited && r.code == 1) << "exit " << r.code << " signal " << r.signal << "\n"
                                       << read_all(out);
  EXPECT_NE(read_all(out).find("was run by a broker in another pid namespace"), std::string::npos)
      << read_all(out);
  // The domain is intact for a broker in the right namespace.
  bus.start_broker();
  Client c = bus.client();
  auto con = c.consumer("jobs").value();
  auto d = con.receive(5s);
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ(d->text(), "kept");
  d->ack();
}

// ---- the control connection ----

// A call that times out (the broker is stopped) must not make the next call read the late answer. On
// e1268a1 every later reply answered the previous request: two subscribers ended up popping one ring.
TEST(ControlProtocolTest, LateReplyOfATimedOutCallIsDroppedAndItsSlotGivenBack) {
  Bus bus;
  bus.create_topics({{"s", stream(16)}});
  auto c = Client::connect({.request_timeout = 300ms}).value();
  kill(bus.broker_pid(), SIGSTOP);
  auto first = c.subscriber("s");
  kill(bus.broker_pid(), SIGCONT);
  ASSERT_FALSE(first);
  EXPECT_EQ(first.error().code(), Errc::timed_out) << first.error().message();
  // The broker now answers the stale subscribe (and the undo the client sent after it); the next call
  // reads its own answer.
  auto status = c.request({{"op", "status"}});
  ASSERT_TRUE(status) << status.error().message();
  EXPECT_EQ(status->value("pid", 0), bus.broker_pid()) << *status;
  auto sub = c.subscriber("s");
  ASSERT_TRUE(sub) << sub.error().message();
  // The timed-out subscribe left no slot behind that nobody reads.
  EXPECT_EQ(topic_stats(c, "s").value("subscribers", -1), 1) << topic_stats(c, "s");
  auto pub = c.publisher("s").value();
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(pub.publish(std::to_string(i)));
  for (int i = 1; i <= 3; ++i) {
    auto m = sub->receive(5s);
    ASSERT_TRUE(m) << m.error().message();
    EXPECT_EQ(m->text(), std::to_string(i));
  }
}

TEST(ControlProtocolTest, EveryReplyEchoesTheRequestId) {
  Bus bus;
  const auto sock = control::socket_path(bus.domain()).value();
  const int fd = control::connect_socket(sock).value();
  ASSERT_TRUE(
      control::send_frame(fd, {{"op", "hello"}, {"version", control::kProtocolVersion}, {"req_id", 41}}));
  auto hello = control::recv_frame(fd, 5s);
  ASSERT_TRUE(hello);
  EXPECT_EQ(hello->value("req_id", 0), 41) << *hello;
  EXPECT_EQ(hello->value("pid", 0), getpid()) << *hello;
  EXPECT_EQ(hello->value("identity", std::uint64_t{0}), OwnerId::self().value) << *hello;
  ASSERT_TRUE(control::send_frame(fd, {{"op", "topic_delete"}, {"name", "nope"}, {"req_id", 42}}));
  auto err = control::recv_frame(fd, 5s);
  ASSERT_TRUE(err);
  EXPECT_EQ(err->value("ok", true), false);
  EXPECT_EQ(err->value("req_id", 0), 42) << *err;
  close(fd);
}

// ---- subscriber slots across broker restarts ----

// A slot adopted from a dead broker that its (live) owner never claims back is freed after the grace
// period: nobody reads it, and a block-policy publisher would wait on it forever.
TEST(SlotRestartTest, UnclaimedAdoptedSlotIsFreedAfterTheGracePeriod) {
  Bus bus;
  bus.create_topics(
      {{"s", {.kind = TopicKind::stream, .depth = 4, .max_size = 64, .overflow = Overflow::block}}});
  const auto sock = control::socket_path(bus.domain()).value();
  const int fd = control::connect_socket(sock).value();
  ASSERT_TRUE(control::call(fd, {{"op", "hello"}, {"version", control::kProtocolVersion}}, 5s));
  ASSERT_TRUE(control::call(fd, {{"op", "subscribe"}, {"name", "s"}, {"port", 1}}, 5s));
  bus.stop_broker(SIGKILL);  // this process stays alive, holding a slot it will never claim back
  close(fd);
  bus.start_broker();
  Client c = bus.client();
  EXPECT_EQ(topic_stats(c, "s").value("subscribers", -1), 1);
  EXPECT_TRUE(wait_until([&] { return topic_stats(c, "s").value("subscribers", -1) == 0; }, 15s))
      << bus.log();
  EXPECT_NE(bus.log().find("did not claim it back"), std::string::npos) << bus.log();
  // Block-policy publishing no longer waits for anyone.
  ASSERT_TRUE(c.publisher("s")->publish(std::string_view("x"), {}, 100ms));
}

// A Subscriber dropped while no broker runs gives its slot up at the next connection.
TEST(SlotRestartTest, SubscriberDroppedWhileNoBrokerRunsIsUnsubscribedAtTheNextConnection) {
  Bus bus;
  bus.create_topics({{"s", stream(4)}});
  {
    Client c = bus.client();
    {
      auto sub = c.subscriber("s").value();
      bus.stop_broker(SIGTERM);
      ASSERT_TRUE(wait_until([&] { return !c.connected(); }, 10s));
    }  // the unsubscribe cannot be sent now
    bus.start_broker();
    ASSERT_TRUE(wait_until([&] { return c.connected(); }, 10s));
    // Well inside the grace period: the unsubscribe went out with the reconnect.
    EXPECT_TRUE(wait_until([&] { return topic_stats(c, "s").value("subscribers", -1) == 0; }, 3s))
        << topic_stats(c, "s") << bus.log();
  }
}

// A subscriber that comes back after its slot was freed (it could not reconnect in time) gets the slot
// back and is told how many messages it missed, instead of a silent gap.
TEST(SlotRestartTest, SubscriberBackAfterItsSlotWasFreedIsToldWhatItMissed) {
  Bus bus;
  bus.create_topics({{"s", stream(16)}});
  auto* f = shared_block<std::atomic<int>>(2);  // [0]: phase, [1]: missed reported by the child
  const pid_t child = fork_child([&] {
    auto c = Client::connect();
    if (!c) return 2;
    auto sub = c->subscriber("s");
    if (!sub) return 3;
    f[0].store(1);
    auto first = sub->receive(20s);
    if (!first || first->text() != "before") return 4;
    f[0].store(2);
    auto next = sub->receive(60s);
    if (!next) return 5;
    f[1].store(static_cast<int>(next->missed()));
    return next->text() == "after" ? 0 : 6;
  });
  ASSERT_TRUE(wait_until([&] { return f[0].load() == 1; }, 20s));
  {
    Client c = bus.client();
    ASSERT_TRUE(c.publisher("s")->publish(std::string_view("before")));
  }
  ASSERT_TRUE(wait_until([&] { return f[0].load() == 2; }, 20s));
  kill(child, SIGSTOP);  // it cannot reconnect while stopped
  bus.stop_broker(SIGKILL);
  bus.start_broker();
  {
    Client c = bus.client();
    auto pub = c.publisher("s").value();
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(pub.publish(std::string_view("in-ring")));  // the slot is active
    ASSERT_TRUE(wait_until([&] { return topic_stats(c, "s").value("subscribers", -1) == 0; }, 15s))
        << bus.log();
    for (int i = 0; i < 4; ++i) (void)pub.publish(std::string_view("while-free"));
    kill(child, SIGCONT);  // reconnects and reattaches its freed slot
    ASSERT_TRUE(wait_until([&] { return topic_stats(c, "s").value("subscribers", -1) == 1; }, 15s))
        << bus.log();
    ASSERT_TRUE(pub.publish(std::string_view("after")));
  }
  const auto r = wait_child(child, 30s);
  EXPECT_TRUE(r.exited && r.code == 0) << "code " << r.code;
  EXPECT_EQ(f[1].load(), 7) << "3 drained from its ring + 4 published while its slot was free";
}

// ---- deleted topics ----

// Ports of a deleted (or purged) topic fail instead of publishing into a segment nobody reads again.
TEST(DeletedTopicTest, PortsOfADeletedOrPurgedTopicFailWithNotFound) {
  Bus bus;
  bus.create_topics({{"q", queue(8)}, {"s", stream(8)}});
  Client c = bus.client();
  auto prod = c.producer("q").value();
  auto con = c.consumer("q").value();
  auto pub = c.publisher("s").value();
  auto sub = c.subscriber("s").value();
  ASSERT_TRUE(prod.publish(std::string_view("1")));
  ASSERT_TRUE(c.delete_topic("q"));
  auto st = prod.publish(std::string_view("2"));
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::not_found);
  EXPECT_NE(st.error().message().find("was deleted"), std::string::npos) << st.error().message();
  auto d = con.receive(100ms);
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code(), Errc::not_found);
  // stop --purge marks every topic before removing it.
  ASSERT_TRUE(c.request({{"op", "stop"}, {"purge", true}}));
  ASSERT_TRUE(wait_until(
      [&] { return kill(bus.broker_pid(), 0) != 0 || waitpid(bus.broker_pid(), nullptr, WNOHANG) > 0; },
      10s));
  auto ps = pub.publish(std::string_view("x"));
  ASSERT_FALSE(ps);
  EXPECT_EQ(ps.error().code(), Errc::not_found);
  EXPECT_EQ(sub.receive(100ms).error().code(), Errc::not_found);
  EXPECT_NE(access(("/dev/shm/shmbus." + bus.domain() + ".lock").c_str(), F_OK), 0)
      << "purge leaves no lock file";
}

// ---- waiters killed while parked ----

TEST(WaiterTest, ConsumerKilledWhileParkedLeavesNoSleeperCount) {
  Bus bus;
  bus.create_topics({{"q", queue(8)}});
  const pid_t child = fork_child([] {
    auto c = Client::connect();
    if (!c) return 2;
    auto con = c->consumer("q");
    if (!con) return 3;
    (void)con->receive(60s);
    return 4;
  });
  auto dir = DirectoryView::open(bus.domain()).value();
  auto t = TopicHandle::open(bus.domain(), dir.find("q")->id).value();
  EventCountShared& ne = t.shared()->not_empty;
  const WaiterRecord* recs =
      t.segment().at(Ref<WaiterRecord>{t.shared()->waiters_offset}, t.shared()->waiter_count);
  auto waiting = [&] {
    std::uint32_t n = 0;
    for (std::uint32_t i = 0; i < t.shared()->waiter_count; ++i) n += recs[i].waiting[kLaneNotEmpty].load();
    return n;
  };
  ASSERT_TRUE(wait_until([&] { return waiting() == 1; }, 20s));
  kill(child, SIGKILL);
  wait_child(child);
  // The broker sees the death through the pidfd and forgets the dead waiter's record.
  EXPECT_TRUE(wait_until([&] { return waiting() == 0; }, 10s)) << bus.log();
  Client c = bus.client();
  const auto wakes = ne.wakes.load();
  ASSERT_TRUE(c.producer("q")->publish(std::string_view("x")));
  EXPECT_EQ(ne.wakes.load(), wakes) << "a push made a FUTEX_WAKE for nobody";
}

// ---- queues ----

// A lone consumer of a queue that producers filled meanwhile nacks (or drops) what it holds: it must not
// wait for room only it could make.
TEST(QueueLivenessTest, LoneConsumerNacksIntoAFullQueueWithoutWaiting) {
  Bus bus;
  bus.create_topics({{"q", queue(4)}});
  Client c = bus.client();
  auto prod = c.producer("q").value();
  auto con = c.consumer("q").value();
  for (int i = 1; i <= 4; ++i) ASSERT_TRUE(prod.publish(std::to_string(i)));
  auto d = con.receive(5s).value();
  ASSERT_TRUE(prod.publish(std::string_view("5")));
  ASSERT_FALSE(prod.publish(std::string_view("6"), {}, 10ms));  // full
  const auto t0 = std::chrono::steady_clock::now();
  d.nack();
  auto d2 = con.receive(5s).value();
  d2 = Delivery(std::move(d2));  // unchanged; then dropped unacked below
  { [[maybe_unused]] Delivery dropped = std::move(d2); }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  EXPECT_EQ(topic_stats(c, "q").value("queued", -1), 5);
  // Everything is still there, the two that went back flagged redelivered.
  int redelivered = 0;
  std::set<std::string> seen;
  for (int i = 0; i < 5; ++i) {
    auto m = con.receive(5s);
    ASSERT_TRUE(m) << m.error().message();
    seen.insert(std::string(m->text()));
    redelivered += m->redelivered() ? 1 : 0;
    m->ack();
  }
  EXPECT_EQ(seen, (std::set<std::string>{"1", "2", "3", "4", "5"}));
  EXPECT_EQ(redelivered, 2);
}

// A consumer killed while the queue is at its depth: the message comes back, and the counters and the
// log say so (on e1268a1 redelivered stayed 0, in_flight 1 forever, and nothing was logged).
TEST(QueueLivenessTest, ConsumerKilledUnderBackPressureIsCountedAndLogged) {
  Bus bus;
  bus.create_topics({{"q", queue(2)}}, [](Client& c) {
    auto p = c.producer("q").value();
    ASSERT_TRUE(p.publish(std::string_view("a")));
    ASSERT_TRUE(p.publish(std::string_view("b")));
  });
  auto* flag = shared_block<std::atomic<int>>();
  const pid_t child = fork_child([&] {
    auto c = Client::connect({.name = "doomed"});
    if (!c) return 2;
    auto con = c->consumer("q");
    if (!con) return 3;
    auto d = con->receive(10s);
    if (!d) return 4;
    flag->store(1);
    pause();
    return 0;
  });
  ASSERT_TRUE(wait_until([&] { return flag->load() == 1; }, 20s));
  {
    Client c = bus.client();
    ASSERT_TRUE(c.producer("q")->publish(std::string_view("c")));  // back at depth 2
  }
  kill(child, SIGKILL);
  wait_child(child);
  Client c = bus.client();
  ASSERT_TRUE(wait_until([&] { return topic_stats(c, "q").value("redelivered", 0) == 1; }, 10s))
      << topic_stats(c, "q") << bus.log();
  const auto t = topic_stats(c, "q");
  EXPECT_EQ(t.value("queued", -1), 3) << t;
  EXPECT_EQ(t.value("in_flight", -1), 3) << t;
  EXPECT_NE(
      bus.log().find("(doomed) exited: reclaimed 0 chunk(s) to the pools, redelivered 1 queue message(s)"),
      std::string::npos)
      << bus.log();
  auto con = c.consumer("q").value();
  for (int i = 0; i < 3; ++i) con.receive(5s).value().ack();
  EXPECT_EQ(topic_stats(c, "q").value("in_flight", -1), 0);
}

// Queued messages outlive an autostarted broker's idle exit and a graceful stop: the next broker
// adopts them. On e1268a1 the queue was gone ("topic does not exist").
TEST(QueueLivenessTest, QueuedMessagesOutliveIdleExitAndStop) {
  Bus bus;
  bus.create_topics({{"keep", queue(16)}}, [](Client& c) {
    auto p = c.producer("keep").value();
    for (int i = 1; i <= 5; ++i) ASSERT_TRUE(p.publish(std::to_string(i)));
  });
  bus.stop_broker(SIGTERM);  // a graceful stop (what `shmbus stop` asks for)
  // An autostarted broker that idles out.
  setenv("SHMBUS_AUTOSTART", "1", 1);
  setenv("SHMBUS_BROKER", SHMBUS_BIN, 1);
  pid_t auto_pid = 0;
  {
    Client c = Client::connect().value();
    auto st = c.request({{"op", "status"}}).value();
    EXPECT_EQ(st.value("autostart", false), true);
    auto_pid = st.value("pid", 0);
    auto con = c.consumer("keep").value();
    auto d = con.receive(5s).value();
    EXPECT_EQ(d.text(), "1");
    d.ack();
  }
  ASSERT_GT(auto_pid, 0);
  // Default idle exit: 10 s without clients.
  EXPECT_TRUE(wait_until([&] { return kill(auto_pid, 0) != 0; }, 30s))
      << "the autostarted broker did not idle out";
  {
    Client c = Client::connect().value();  // autostarts another broker, which adopts the queue
    auto con = c.consumer("keep").value();
    for (int i = 2; i <= 5; ++i) {
      auto d = con.receive(5s);
      ASSERT_TRUE(d) << d.error().message();
      EXPECT_EQ(d->text(), std::to_string(i));
      d->ack();
    }
    auto st = c.request({{"op", "status"}}).value();
    kill(st.value("pid", 0), SIGTERM);
  }
  setenv("SHMBUS_AUTOSTART", "0", 1);
}

// ---- honest tools ----

TEST(HonestApiTest, DeliveryAndSampleUsedAfterReleaseAreEmptyNotACrash) {
  Bus bus;
  bus.create_topics({{"q", queue(4)}, {"s", stream(4)}});
  Client c = bus.client();
  ASSERT_TRUE(c.producer("q")->publish(std::string_view("payload")));
  auto con = c.consumer("q").value();  // a Delivery must not outlive its Consumer (shmbus.hpp)
  auto d = con.receive(5s).value();
  d.ack();
  EXPECT_TRUE(d.bytes().empty());
  EXPECT_TRUE(d.text().empty());
  EXPECT_EQ(d.seq(), 0u);
  EXPECT_TRUE(d.topic().empty());
  EXPECT_FALSE(d.attr("k").has_value());
  EXPECT_TRUE(d.attrs().empty());
  EXPECT_FALSE(d.redelivered());
  d.ack();   // a second ack is a no-op
  d.nack();  // so is a nack after the ack
  auto sub = c.subscriber("s").value();
  ASSERT_TRUE(c.publisher("s")->publish(std::string_view("x")));
  auto s = sub.receive(5s).value();
  Sample moved = std::move(s);
  EXPECT_EQ(moved.text(), "x");
  EXPECT_TRUE(s.bytes().empty());  // NOLINT: use after move is the point
  EXPECT_EQ(s.publisher(), 0u);
  EXPECT_EQ(topic_stats(c, "q").value("acked", 0), 1);
}

TEST(HonestApiTest, ValueOfAnErrorResultSaysWhy) {
  EXPECT_DEATH((void)Result<int>(Error(Errc::not_found, "topic \"x\" does not exist")).value(),
               "value\\(\\) called on a Result that holds an error: not_found: topic \"x\" does not exist");
}

}  // namespace
}  // namespace shmbus
