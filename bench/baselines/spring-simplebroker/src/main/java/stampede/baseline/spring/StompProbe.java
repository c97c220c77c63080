package stampede.baseline.spring;

import java.net.URI;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

import javax.websocket.ClientEndpointConfig;
import javax.websocket.ContainerProvider;
import javax.websocket.Endpoint;
import javax.websocket.EndpointConfig;
import javax.websocket.MessageHandler;
import javax.websocket.Session;
import javax.websocket.WebSocketContainer;

/**
 * Readiness probe used by scripts/baseline-spring.sh: a real STOMP session
 * over WebSocket (Tomcat's javax.websocket client), not just a TCP connect.
 *
 * CONNECT -> CONNECTED, SUBSCRIBE /topic/probe, SEND to it -> MESSAGE,
 * DISCONNECT receipt -> RECEIPT. Retries until the deadline.
 *
 * <pre>
 * java stampede.baseline.spring.StompProbe ws://127.0.0.1:8080/ws [timeoutSeconds]
 * </pre>
 * Exit 0 when one full session succeeded, 1 otherwise.
 */
public final class StompProbe {

    private StompProbe() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            System.err.println("usage: StompProbe ws://host:port/ws [timeoutSeconds]");
            System.exit(2);
        }
        URI uri = URI.create(args[0]);
        long timeoutMs = (args.length > 1 ? Long.parseLong(args[1]) : 10) * 1000L;
        long deadline = System.currentTimeMillis() + timeoutMs;
        String last = "no attempt";
        WebSocketContainer container = ContainerProvider.getWebSocketContainer();
        while (true) {
            try {
                once(container, uri, Math.max(1000L, Math.min(5000L, deadline - System.currentTimeMillis())));
                System.out.println("stomp probe ok " + uri);
                System.exit(0);
            } catch (Exception ex) {
                last = ex.toString();
            }
            if (System.currentTimeMillis() + 250 >= deadline) {
                break;
            }
            Thread.sleep(250);
        }
        System.err.println("stomp probe failed for " + uri + ": " + last);
        System.exit(1);
    }

    private static void once(WebSocketContainer container, URI uri, long stepMs) throws Exception {
        final BlockingQueue<String> frames = new LinkedBlockingQueue<String>();
        Endpoint endpoint = new Endpoint() {
            @Override
            public void onOpen(Session session, EndpointConfig config) {
                session.addMessageHandler(new MessageHandler.Whole<String>() {
                    @Override
                    public void onMessage(String text) {
                        frames.add(text);
                    }
                });
            }
        };
        Session session = container.connectToServer(endpoint, ClientEndpointConfig.Builder.create().build(), uri);
        try {
            session.getBasicRemote().sendText(
                    "CONNECT\naccept-version:1.2,1.1\nhost:/\nheart-beat:0,0\n\n\0");
            expect(frames, "CONNECTED", stepMs);
            session.getBasicRemote().sendText("SUBSCRIBE\nid:probe\ndestination:/topic/probe\n\n\0");
            session.getBasicRemote().sendText(
                    "SEND\ndestination:/topic/probe\ncontent-type:text/plain\n\nping\0");
            expect(frames, "MESSAGE", stepMs);
            session.getBasicRemote().sendText("DISCONNECT\nreceipt:probe\n\n\0");
            expect(frames, "RECEIPT", stepMs);
        } finally {
            session.close();
        }
    }

    private static void expect(BlockingQueue<String> frames, String command, long stepMs) throws Exception {
        long deadline = System.currentTimeMillis() + stepMs;
        while (true) {
            long left = deadline - System.currentTimeMillis();
            String frame = left > 0 ? frames.poll(left, TimeUnit.MILLISECONDS) : null;
            if (frame == null) {
                throw new IllegalStateException("timed out waiting for " + command);
            }
            String head = frame.trim();
            if (head.isEmpty()) {
                continue; // heart-beat
            }
            if (head.startsWith(command + "\n")) {
                return;
            }
            throw new IllegalStateException("expected " + command + ", got: "
                    + head.replace('\0', '@').replace("\n", "\\n"));
        }
    }
}
