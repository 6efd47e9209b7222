/* Perf DIR: a JVM with default flags, so with its performance-data file
 * (/tmp/hsperfdata_USER/PID: flocked, mapped shared, its fd closed), a
 * thread counting every millisecond and a map of 20,000 entries. Writes
 * DIR/ready (its PID), waits for SIGTERM, then, in a shutdown hook, checks
 * the map against the checksum taken when it was built and that the
 * counting thread still counts, and writes DIR/verdict. Run with the
 * source-file launcher: `java Perf.java DIR`. STASIS_TEST_CORRUPT=1 changes
 * one entry of the map before the checks. */
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.HashMap;

public class Perf {
    static volatile long count;

    public static void main(String[] args) throws Exception {
        Path dir = Paths.get(args[0]);
        HashMap<Integer, String> map = new HashMap<>();
        long sum = 0;
        for (int i = 0; i < 20000; i++) {
            String v = "value-" + (i * 7919L);
            map.put(i, v);
            sum += v.hashCode();
        }
        final long expected = sum;
        Thread counter = new Thread(() -> {
            while (true) {
                count++;
                try {
                    Thread.sleep(1);
                } catch (InterruptedException e) {
                    return;
                }
            }
        });
        counter.setDaemon(true);
        counter.start();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            String c = System.getenv("STASIS_TEST_CORRUPT");
            if (c != null && !c.isEmpty() && !c.equals("0")) {
                map.put(7, "corrupted");
            }
            long s = 0;
            for (int i = 0; i < 20000; i++) {
                String v = map.get(i);
                s += v == null ? 1 : v.hashCode();
            }
            long before = count;
            try {
                Thread.sleep(100);
            } catch (InterruptedException e) {
                // checked below all the same
            }
            String verdict;
            if (map.size() != 20000 || s != expected) {
                verdict = "FAIL: the map is not as built";
            } else if (count == before) {
                verdict = "FAIL: the counting thread stopped";
            } else {
                verdict = "PASS count=" + count;
            }
            write(dir, "verdict", verdict);
        }));
        write(dir, "ready", ProcessHandle.current().pid() + "\n");
        while (true) {
            Thread.sleep(1000);
        }
    }

    static void write(Path dir, String name, String text) {
        try {
            Path tmp = dir.resolve("." + name + ".tmp." + System.nanoTime());
            Files.writeString(tmp, text + "\n");
            Files.move(tmp, dir.resolve(name), StandardCopyOption.ATOMIC_MOVE);
        } catch (Exception e) {
            System.err.println("cannot write " + name + ": " + e);
            Runtime.getRuntime().halt(2);
        }
    }
}
