/* The pod sandbox's process for the kubelet node (tests/harness/kubelet_node.py): it holds the pod's
   namespaces, reaps the orphans it inherits, and exits on SIGINT or SIGTERM. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signum) {
  (void)signum;
  _exit(0);
}

static void reap(int signum) {
  (void)signum;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  signal(SIGINT, stop);
  signal(SIGTERM, stop);
  signal(SIGCHLD, reap);
  for (;;) {
    pause();
  }
}
