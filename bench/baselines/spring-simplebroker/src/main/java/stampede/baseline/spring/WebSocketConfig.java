package stampede.baseline.spring;

import org.springframework.context.annotation.Configuration;
import org.springframework.messaging.simp.config.MessageBrokerRegistry;
import org.springframework.web.socket.config.annotation.AbstractWebSocketMessageBrokerConfigurer;
import org.springframework.web.socket.config.annotation.EnableWebSocketMessageBroker;
import org.springframework.web.socket.config.annotation.StompEndpointRegistry;

/**
 * The textbook Spring STOMP chat-server configuration (the one in Spring's
 * "Using WebSocket to build an interactive web application" guide, minus
 * SockJS): the in-memory SimpleBroker on /topic and /queue, application
 * destinations on /app, one plain-WebSocket STOMP endpoint on /ws.
 *
 * Everything else (channel thread pools, broker, WebSocket transport limits)
 * is left at Spring's defaults on purpose: the baseline measures what users
 * run when they do not tune anything. See README.md for what those are.
 */
@Configuration
@EnableWebSocketMessageBroker
public class WebSocketConfig extends AbstractWebSocketMessageBrokerConfigurer {

    @Override
    public void registerStompEndpoints(StompEndpointRegistry registry) {
        // Plain WebSocket (no .withSockJS()); any Origin is accepted.
        registry.addEndpoint("/ws").setAllowedOrigins("*");
    }

    @Override
    public void configureMessageBroker(MessageBrokerRegistry registry) {
        registry.enableSimpleBroker("/topic", "/queue");
        registry.setApplicationDestinationPrefixes("/app");
    }
}
