// The parts of the child-process library the local-cluster launcher needs (a session of its
// own, children released to outlive us, processes stopped by pid) and ServerProcess's start-up
// protocol, with /bin/sh standing in for a server.
#include "common/process.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvtier {
namespace {

using ::testing::HasSubstr;

SpawnOptions Detached(std::vector<std::string> argv) {
  SpawnOptions o;
  o.argv = std::move(argv);
  o.new_session = true;
  o.die_with_parent = false;
  return o;
}

TEST(ProcessTest, NewSessionHasItsOwnSessionAndNoStdin) {
  absl::StatusOr<ChildProcess> child = ChildProcess::Spawn(Detached({"sleep", "30"}));
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_EQ(getsid(child->pid()), child->pid());
  EXPECT_NE(getsid(child->pid()), getsid(0));
  child->Terminate(absl::ZeroDuration());

  absl::StatusOr<CommandResult> r =
      RunCommand(Detached({"readlink", "/proc/self/fd/0"}), absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->output, "/dev/null\n");
}

TEST(ProcessTest, ReleasedChildOutlivesItsObjectUntilTerminated) {
  pid_t pid = -1;
  {
    absl::StatusOr<ChildProcess> child = ChildProcess::Spawn(Detached({"sleep", "30"}));
    ASSERT_TRUE(child.ok()) << child.status();
    pid = child->Release();
    EXPECT_FALSE(child->Running());
  }
  ASSERT_GT(pid, 0);
  EXPECT_TRUE(ProcessAlive(pid));
  EXPECT_TRUE(TerminateAll({pid}, absl::Seconds(5)).empty());  // SIGTERM was enough
  EXPECT_FALSE(ProcessAlive(pid));
}

TEST(ProcessTest, TerminateAllKillsWhatIgnoresSigterm) {
  absl::StatusOr<ChildProcess> child =
      ChildProcess::Spawn(Detached({"/bin/sh", "-c", "trap '' TERM; exec sleep 30"}));
  ASSERT_TRUE(child.ok()) << child.status();
  const pid_t pid = child->Release();
  // Let the shell install the trap before it is signalled.
  ASSERT_TRUE(WaitFor(
      [&] {
        return FileTail(absl::StrCat("/proc/", pid, "/cmdline"), std::string::npos)
            .starts_with("sleep");
      },
      absl::Seconds(5)));
  EXPECT_EQ(TerminateAll({pid}, absl::Milliseconds(200)), std::vector<pid_t>{pid});
  EXPECT_FALSE(ProcessAlive(pid));
}

TEST(ProcessTest, AZombieIsNotAlive) {
  absl::StatusOr<ChildProcess> child = ChildProcess::Spawn(Detached({"true"}));
  ASSERT_TRUE(child.ok()) << child.status();
  const pid_t pid = child->Release();  // not reaped by the object: it stays a zombie
  EXPECT_TRUE(WaitFor([&] { return !ProcessAlive(pid); }, absl::Seconds(5)));
  EXPECT_EQ(kill(pid, 0), 0);  // still in the process table
  EXPECT_EQ(waitpid(pid, nullptr, 0), pid);
}

class ServerProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/kvtier_process_test_", getpid());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // A "server": /bin/sh running `script`, with --ready-file=PATH as its $0.
  absl::StatusOr<ServerProcess> Spawn(const std::string& script) {
    SpawnOptions o;
    o.argv = {"/bin/sh", "-c", script};
    return ServerProcess::Spawn(o, dir_, "fake");
  }

  std::string dir_;
};

TEST_F(ServerProcessTest, AwaitsTheReadyFile) {
  absl::StatusOr<ServerProcess> s = Spawn(
      "echo starting; sleep 0.2; "
      "echo '{\"grpc_port\":4321,\"metrics_port\":99,\"pid\":1}' > \"${0#--ready-file=}\"; "
      "exec sleep 30");
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE(s->AwaitReady(absl::Seconds(10)).ok());
  EXPECT_EQ(s->grpc_port(), 4321);
  EXPECT_EQ(s->metrics_port(), 99);
  EXPECT_EQ(s->address(), "127.0.0.1:4321");
  EXPECT_EQ(s->log(), "starting\n");
  EXPECT_EQ(s->log_path(), dir_ + "/fake.log");
}

TEST_F(ServerProcessTest, ReportsAServerThatExitsBeforeItIsReady) {
  absl::StatusOr<ServerProcess> s = Spawn("echo no model here; exit 3");
  ASSERT_TRUE(s.ok()) << s.status();
  absl::Status st = s->AwaitReady(absl::Seconds(10));
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("exit 3"));
  EXPECT_THAT(st.message(), HasSubstr("no model here"));
}

TEST(ProcessTest, SelfExeDirHoldsThisProgram) {
  absl::StatusOr<std::string> dir = SelfExeDir();
  ASSERT_TRUE(dir.ok()) << dir.status();
  EXPECT_TRUE(std::filesystem::exists(std::filesystem::path(*dir) / "common_test"));
}

}  // namespace
}  // namespace kvtier
