/*
 * burrow.h: the C API of burrow's client (libburrow).
 *
 * An app embeds the receiver: it pairs with devices and opens tunnels to
 * their services, end-to-end encrypted through a relay, with no burrow
 * process beside it. Build the library from the module's root:
 *
 *   go build -buildmode=c-shared  -o libburrow.so ./libburrow   (Linux, Android, Python ctypes)
 *   go build -buildmode=c-archive -o libburrow.a  ./libburrow   (static linking: iOS, macOS)
 *
 * and compile against this header (not the one go build writes beside the
 * library, which says the same with Go's spelling of the types).
 *
 * Handles. burrow_client_new and burrow_forward return handles: ints > 0,
 * never reused while the library is loaded. burrow_close ends one. A
 * handle that is closed or was never returned is refused (-1).
 *
 * Errors. Every function returns -1 on failure and keeps a message that
 * says what failed and what to do, which burrow_errmsg copies out:
 *   - a call on a valid client or forward handle keeps its message with
 *     that handle;
 *   - a call with no valid handle (burrow_client_new, or a handle that is
 *     closed, unknown or of the wrong kind) keeps it with handle 0.
 * A message stays until the next failure on the same handle replaces it;
 * a call that succeeds leaves it. Read it right after the call that
 * failed. Threads that share a handle and fail at the same moment
 * overwrite each other's message (each is still a true message of one of
 * the failures): where the exact message matters, give each thread its
 * own client, or serialize failing calls with the burrow_errmsg that
 * follows them.
 *
 * Threads. Every function is safe to call from any thread, concurrently,
 * on the same handle or on different ones. Calls that talk to a relay or
 * device (burrow_client_new does not; burrow_pair, burrow_dial,
 * burrow_forward do) block the calling thread until they are done (at
 * most about 30 seconds); call them off an app's UI thread.
 *
 * Strings passed in are read during the call only; the library keeps no
 * pointer to them. A crash in the library's Go code is caught at the
 * boundary and returned as -1 with a message ("internal error: ...").
 *
 * Platforms: built and tested on Linux (amd64). The Android and iOS
 * builds follow Go's c-shared and c-archive modes (see the README).
 */
#ifndef BURROW_H
#define BURROW_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * burrow_client_new returns a client with the key and the paired devices
 * of the client home directory home (identity.key and devices.yaml, as
 * the burrow command's client commands use them: burrow pair, burrow
 * connect, burrow devices). NULL or "" is the default home: $BURROW_HOME,
 * else burrow/ in the user's configuration directory. The key is created
 * if there is none; the directory must be private to the user (it holds
 * the key and the device keys the client trusts).
 *
 * The client attaches to a relay when it first needs one (on the first
 * pair or dial through it); devices paired on different relays are all
 * reachable through one client. The devices file is read at each dial,
 * so a device paired meanwhile (by this client or by the burrow command)
 * is known at once.
 *
 * Returns a client handle > 0, or -1 (message on handle 0). Close the
 * handle with burrow_close when done.
 */
int burrow_client_new(const char *home);

/*
 * burrow_client_lan turns the LAN on (on != 0, the default) or off for
 * client. On the LAN, every pair and dial is tried there too, at the same
 * time as through the relay: a device on the same network answers an
 * mDNS query under a tag only those who know its ID can compute, and the
 * session runs there, directly, even with the relay down. Off, the client
 * reaches devices through their relay only, and waits for the relay
 * before each call. Call it right after burrow_client_new, before the
 * first pair or dial.
 *
 * Returns 0, or -1 (message on client).
 */
int burrow_client_lan(int client, int on);

/*
 * burrow_pair pairs client with the device that made invite (a
 * "burrow://pair?..." string, from "burrow device invite" on the device)
 * and saves it in the client's home as name: NULL or "" is the name the
 * device gave itself, else its short ID. The device's key is pinned from
 * the invite: a device proving another key fails with a key mismatch,
 * and the invite's secret is never sent to it.
 *
 * Returns 0 once paired and saved, or -1 (message on client).
 */
int burrow_pair(int client, const char *invite, const char *name);

/*
 * burrow_dial opens a tunnel to service on device (a paired device's
 * name, or its ID) and waits until the device accepts it. On success it
 * stores in *conn_fd a connected stream socket (AF_UNIX, SOCK_STREAM,
 * close-on-exec) that carries the tunnel's bytes both ways:
 *   - what the app writes goes to the service, what the service sends
 *     the app reads;
 *   - shutdown(fd, SHUT_WR) ends what goes to the service (it reads end
 *     of stream) while the app can still read; when the service ends what
 *     it sends, the app reads end of stream (read returns 0);
 *   - close(fd) ends what goes to the service, as shutdown does; the
 *     tunnel ends once the service has ended its side too, or is aborted
 *     at the next bytes the service sends.
 * The socket belongs to the caller, who must close it; the library keeps
 * nothing of a tunnel (no thread, no file descriptor) once both sides
 * have ended it. Writing after the
 * tunnel has ended raises SIGPIPE, as on any socket: use
 * send(..., MSG_NOSIGNAL) or ignore SIGPIPE.
 *
 * Refusals fail with a message that says why: an unknown device (not
 * paired), a device that is offline, a client that is not authorized, an
 * unknown service, a device whose key does not match the pairing.
 *
 * Returns 0, or -1 (message on client; *conn_fd is left alone).
 */
int burrow_dial(int client, const char *device, const char *service, int *conn_fd);

/*
 * burrow_forward listens on listen_addr (a TCP host:port; NULL or "" is
 * "127.0.0.1:0", any free loopback port) and forwards every connection
 * accepted there to service on device, as "burrow connect" does, until
 * the forward's handle is closed (or its client's). The address it is
 * bound to ("127.0.0.1:41234") is written to addr_out, NUL-terminated;
 * it fails, listening on nothing, if addr_len bytes cannot hold it (64 is
 * enough). Listening beyond loopback lets anyone who can reach the
 * address use the tunnel.
 *
 * Returns a forward handle > 0, or -1 (message on client).
 */
int burrow_forward(int client, const char *device, const char *service,
                   const char *listen_addr, char *addr_out, size_t addr_len);

/*
 * burrow_close closes a client or a forward handle, and waits until what
 * it ran has stopped:
 *   - a forward stops listening and aborts the connections it carries;
 *   - a client closes its forwards, every tunnel it carries (sockets from
 *     burrow_dial read end of stream or an error; the caller still closes
 *     them) and detaches from its relays.
 * The handle is invalid afterwards, and so is its message.
 *
 * Returns 0, or -1 if handle is not open (message on handle 0).
 */
int burrow_close(int handle);

/*
 * burrow_errmsg copies the last error message of handle (0: of calls with
 * no valid handle, see above) into buf, NUL-terminated, truncated to
 * len - 1 bytes if it is longer (UTF-8, possibly cut inside a character).
 *
 * Returns the message's full length in bytes (without the NUL; 0 if there
 * is no message, and buf holds ""), so that a return >= len means it was
 * truncated; or -1 if handle is not open or buf is NULL or len is 0. It
 * keeps no message of its own: every message stays as it was.
 */
int burrow_errmsg(int handle, char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* BURROW_H */
