// OwnerId and liveness: death is a proof (ESRCH, a reused pid, a zombie, a pidfd), and "cannot tell" is
// never taken for death.
#include "shmbus/owner.hpp"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>
#include <pthread.h>
#include <sys/syscall.h>

#include <cstdio>
#include <cstring>

#include <vector>

#include "test_util.hpp"

namespace shmbus {
namespace {

// In a child: use up every descriptor (a low RLIMIT_NOFILE, then fill the table), so that any open()
// fails with EMFILE. Returns false if the table could not be filled.
bool exhaust_descriptors() {
  rlimit rl{64, 64};
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0) return false;
  for (int i = 0; i < 64; ++i)
    if (open("/dev/null", O_RDONLY) < 0 && errno == EMFILE) return true;
  return open("/dev/null", O_RDONLY) < 0 && errno == EMFILE;
}

TEST(OwnerTest, SelfIsAliveAndMatchesProc) {
  const OwnerId me = OwnerId::self();
  ASSERT_TRUE(me.valid());
  EXPECT_EQ(me.pid(), getpid());
  EXPECT_EQ(OwnerId::of(getpid()), me);
  EXPECT_EQ(liveness(me), Liveness::alive);
}

TEST(OwnerTest, ExitedAndReapedProcessIsDead) {
  const pid_t pid = test::fork_child([] { return 0; });
  const OwnerId id = OwnerId::of(pid).value_or(OwnerId{});  // the child cannot be reaped yet
  ASSERT_TRUE(test::wait_child(pid).exited);
  if (!id.valid()) GTEST_SKIP() << "the child exited before its start time could be read";
  EXPECT_EQ(liveness(id), Liveness::dead);
}

TEST(OwnerTest, ZombieIsDead) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  const pid_t pid = test::fork_child([&] {
    close(p[1]);
    char b;
    return read(p[0], &b, 1) == 0 ? 0 : 1;  // returns at EOF: when the parent closes its end
  });
  const OwnerId id = OwnerId::of(pid).value();
  EXPECT_EQ(liveness(id), Liveness::alive);
  close(p[1]);  // the child returns: a zombie until we reap it
  siginfo_t si{};
  ASSERT_EQ(waitid(P_PID, static_cast<id_t>(pid), &si, WEXITED | WNOWAIT), 0);  // exited, not reaped
  EXPECT_EQ(liveness(id), Liveness::dead);  // it can no longer touch shared memory
  ASSERT_TRUE(test::wait_child(pid).exited);
  close(p[0]);
}

// A leader that called pthread_exit() shows state 'Z' in /proc while its other threads run (and hold
// what the process holds): it is alive until the whole thread group exits.
TEST(OwnerTest, LeaderThatCalledPthreadExitIsAliveWhileItsThreadsRun) {
  int go[2];
  ASSERT_EQ(pipe(go), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    close(go[1]);
    static int fd;
    fd = go[0];
    pthread_t t;
    pthread_create(
        &t, nullptr,
        [](void*) -> void* {
          char b;
          (void)!read(fd, &b, 1);  // until the parent closes its end
          _exit(0);
        },
        nullptr);
    // The leader goes and the worker keeps the process: SYS_exit ends one thread, like pthread_exit()
    // but without unwinding through the test framework's frames.
    syscall(SYS_exit, 0);
  }
  const OwnerId id = OwnerId::of(pid).value();
  ASSERT_TRUE(test::wait_until(
      [&] {
        int err = 0;
        char path[64];
        std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
        FILE* f = std::fopen(path, "re");
        if (f == nullptr) return false;
        char buf[512] = {};
        (void)!std::fread(buf, 1, sizeof buf - 1, f);
        std::fclose(f);
        (void)err;
        const char* p = std::strrchr(buf, ')');
        return p != nullptr && p[2] == 'Z';
      },
      std::chrono::seconds(10)))
      << "the leader did not become a zombie";
  EXPECT_EQ(liveness(id), Liveness::alive);
  close(go[1]);  // the worker exits the process
  ASSERT_TRUE(test::wait_child(pid).exited);
  EXPECT_EQ(liveness(id), Liveness::dead);
  close(go[0]);
}

TEST(OwnerTest, SamePidWithAnotherStartTimeIsDead) {
  const OwnerId me = OwnerId::self();
  // The pid runs, but not the process this id named (the pid was reused).
  EXPECT_EQ(liveness(OwnerId::make(me.pid(), me.start() + 1)), Liveness::dead);
}

TEST(OwnerTest, InvalidIdIsUnknownNotDead) {
  EXPECT_EQ(liveness(OwnerId{}), Liveness::unknown);
  EXPECT_EQ(liveness(OwnerId{1ULL << 63}), Liveness::unknown);
}

// A reader whose descriptor table is full cannot read /proc: that is "unknown", never "dead". Before, a
// failed read was taken for death and a live consumer's messages were redelivered to others.
TEST(OwnerTest, UnreadableProcIsUnknownNeverDead) {
  const OwnerId parent = OwnerId::self();
  const pid_t gone = test::fork_child([] { return 0; });
  const OwnerId gone_id = OwnerId::of(gone).value_or(OwnerId::make(gone, 1));
  ASSERT_TRUE(test::wait_child(gone).exited);
  const pid_t pid = test::fork_child([&] {
    if (!exhaust_descriptors()) return 10;
    if (liveness(parent) == Liveness::dead) return 11;   // a live process taken for dead
    if (liveness(gone_id) != Liveness::dead) return 12;  // ESRCH is still a proof without descriptors
    return 0;
  });
  const auto r = test::wait_child(pid);
  ASSERT_TRUE(r.exited);
  EXPECT_EQ(r.code, 0) << "10: could not exhaust descriptors, 11: live parent called dead, 12: dead pid not "
                          "seen dead";
}

// OwnerId::self() in a forked child that cannot read /proc/self/stat aborts with the reason; it never
// stamps a made-up start time (which the broker would take for a dead process).
TEST(OwnerTest, SelfWithoutProcAbortsWithTheReasonInsteadOfAZeroStartTime) {
  (void)OwnerId::self();  // cached in the parent; the child must recompute its own
  int err[2];
  ASSERT_EQ(pipe(err), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(err[1], 2);
    if (!exhaust_descriptors()) _exit(10);
    const OwnerId id = OwnerId::self();
    _exit(id.start() == 0 ? 11 : 12);  // not reached: the read cannot succeed
  }
  close(err[1]);
  const auto r = test::wait_child(pid, std::chrono::seconds(30));
  std::string text;
  char buf[512];
  for (ssize_t n; (n = read(err[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
  close(err[0]);
  ASSERT_FALSE(r.exited && r.code == 10) << "could not exhaust descriptors";
  EXPECT_EQ(r.signal, SIGABRT) << "exit code " << r.code;
  EXPECT_NE(text.find("cannot read /proc/self/stat"), std::string::npos) << text;
  EXPECT_NE(text.find("Too many open files"), std::string::npos) << text;
}

}  // namespace
}  // namespace shmbus
