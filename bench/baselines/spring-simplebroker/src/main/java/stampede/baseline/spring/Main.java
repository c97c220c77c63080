package stampede.baseline.spring;

import java.io.File;
import java.io.IOException;

import org.apache.catalina.Context;
import org.apache.catalina.LifecycleException;
import org.apache.catalina.Wrapper;
import org.apache.catalina.connector.Connector;
import org.apache.catalina.startup.Tomcat;
import org.apache.tomcat.websocket.server.WsSci;
import org.springframework.web.context.support.AnnotationConfigWebApplicationContext;
import org.springframework.web.servlet.DispatcherServlet;

/**
 * Embedded Tomcat 9 + Spring's DispatcherServlet with {@link WebSocketConfig},
 * wired the way Spring Boot's embedded-Tomcat support does it, without Boot.
 *
 * <pre>
 * java [-Dbaseline.port=8080] stampede.baseline.spring.Main [--port 8080]
 * </pre>
 *
 * System properties (all optional):
 * <ul>
 * <li>baseline.port (or --port): TCP port, default 8080.</li>
 * <li>baseline.address (or --address): bind address, default 127.0.0.1
 *     (Boot binds every address; this baseline is only ever driven from
 *     loopback).</li>
 * <li>baseline.maxConnections: connector maxConnections, default 20000
 *     (Tomcat's NIO default is 10000; raised so the connection count is
 *     limited by memory and the 20,000-file limit, not by this setting).</li>
 * <li>baseline.acceptCount: connector acceptCount (listen backlog), default
 *     10000 (Tomcat default 100; the kernel caps it at net.core.somaxconn).</li>
 * <li>baseline.maxThreads: connector maxThreads, default 200 (Tomcat's and
 *     Boot's default, set explicitly only so the log shows it).</li>
 * <li>baseline.baseDir: Tomcat's work directory, default ./tomcat-work.</li>
 * </ul>
 * Prints {@code stampede-spring-baseline ready port=P} on stdout once Tomcat
 * and the Spring context are started.
 */
public final class Main {

    private Main() {
    }

    public static void main(String[] args) throws Exception {
        String port = System.getProperty("baseline.port", "8080");
        String address = System.getProperty("baseline.address", "127.0.0.1");
        for (int i = 0; i < args.length; i++) {
            if ("--port".equals(args[i]) && i + 1 < args.length) {
                port = args[++i];
            } else if ("--address".equals(args[i]) && i + 1 < args.length) {
                address = args[++i];
            } else {
                System.err.println("usage: Main [--port P] [--address A]");
                System.exit(2);
            }
        }
        String maxConnections = System.getProperty("baseline.maxConnections", "20000");
        String acceptCount = System.getProperty("baseline.acceptCount", "10000");
        String maxThreads = System.getProperty("baseline.maxThreads", "200");
        File baseDir = new File(System.getProperty("baseline.baseDir", "tomcat-work")).getAbsoluteFile();
        File docBase = new File(baseDir, "docroot");
        if (!docBase.isDirectory() && !docBase.mkdirs()) {
            throw new IOException("cannot create " + docBase);
        }

        final Tomcat tomcat = new Tomcat();
        tomcat.setBaseDir(baseDir.getPath());

        // Boot's default connector: HTTP/1.1 NIO.
        Connector connector = new Connector("org.apache.coyote.http11.Http11NioProtocol");
        connector.setPort(Integer.parseInt(port));
        connector.setProperty("address", address);
        connector.setProperty("maxConnections", maxConnections);
        connector.setProperty("acceptCount", acceptCount);
        connector.setProperty("maxThreads", maxThreads);
        tomcat.getService().addConnector(connector);
        tomcat.setConnector(connector);

        Context context = tomcat.addContext("", docBase.getPath());
        // Tomcat's JSR-356 (javax.websocket) server, registered the way
        // Boot's TomcatWebSocketServletWebServerCustomizer does it; it puts
        // the ServerContainer that Spring's TomcatRequestUpgradeStrategy uses
        // into the ServletContext.
        context.addServletContainerInitializer(new WsSci(), null);

        AnnotationConfigWebApplicationContext spring = new AnnotationConfigWebApplicationContext();
        spring.register(WebSocketConfig.class);
        DispatcherServlet dispatcher = new DispatcherServlet(spring);
        Wrapper wrapper = Tomcat.addServlet(context, "dispatcherServlet", dispatcher);
        wrapper.setLoadOnStartup(1);
        wrapper.setAsyncSupported(true);
        context.addServletMappingDecoded("/", "dispatcherServlet");

        Runtime.getRuntime().addShutdownHook(new Thread("baseline-shutdown") {
            @Override
            public void run() {
                try {
                    tomcat.stop();
                    tomcat.destroy();
                } catch (LifecycleException ex) {
                    System.err.println("shutdown: " + ex);
                }
            }
        });

        tomcat.start();
        if (!spring.isActive()) {
            System.err.println("Spring context did not start; see the log above");
            System.exit(1);
        }
        System.out.println("stampede-spring-baseline ready port=" + connector.getLocalPort()
                + " maxConnections=" + connector.getProperty("maxConnections")
                + " acceptCount=" + connector.getProperty("acceptCount")
                + " maxThreads=" + connector.getProperty("maxThreads")
                + " cpus=" + Runtime.getRuntime().availableProcessors()
                + " maxHeapMiB=" + (Runtime.getRuntime().maxMemory() >> 20)
                + " java=" + System.getProperty("java.version"));
        System.out.flush();
        tomcat.getServer().await();
    }
}
