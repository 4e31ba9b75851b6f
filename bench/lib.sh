# Helpers shared by the benchmark scripts (sourced; bash).

# A free port on 127.0.0.1 below the ephemeral range (32768-60999): the
# load's own client connections use that range, and a listening port taken
# from it can collide with one of them on the next run ("Address already
# in use").
free_port() {
  /usr/bin/python3 -c 'import random, socket
for _ in range(1000):
    p = random.randint(10000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    print(p)
    break'
}

# True when something listens on 127.0.0.1:$1 (no connection made).
listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

now() { date +%s.%N; }
