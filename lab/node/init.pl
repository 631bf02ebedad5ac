# PID 1 of a lab node (the node has its own PID namespace): what init does for the supervisor.
# It reaps every orphan, so a dead daemon never lingers as a zombie; it records how each main
# process the supervisor watches ended (Restart= tells an exit code from a signal); and it runs
# the supervisor, again if that dies. Perl because the node's init must call waitpid(-1), which
# sh cannot, and perl-base is part of every Debian system.
use strict;
use warnings;
use POSIX ();

my ($supervisor, $run) = @ARGV;
die "usage: init.pl SUPERVISOR RUNDIR\n" unless defined $run;

sub start_supervisor {
    my $pid = fork();
    return 0 unless defined $pid;
    if ($pid == 0) {
        exec('/bin/sh', $supervisor) or POSIX::_exit(127);
    }
    return $pid;
}

sub record_exit {
    my ($pid, $status) = @_;
    return unless -e "$run/watch/$pid";
    my $how = POSIX::WIFSIGNALED($status)
        ? 'signal ' . POSIX::WTERMSIG($status)
        : 'exit ' . POSIX::WEXITSTATUS($status);
    my $tmp = "$run/exit/$pid.tmp";
    if (open(my $fh, '>', $tmp)) {
        print $fh "$how\n";
        close($fh);
        rename($tmp, "$run/exit/$pid");
    }
}

my $supervisor_pid = start_supervisor();
while (1) {
    my $pid = waitpid(-1, 0);
    if ($pid <= 0) {
        sleep(1);
        $supervisor_pid = start_supervisor() unless $supervisor_pid;
        next;
    }
    record_exit($pid, $?);
    if ($pid == $supervisor_pid) {
        sleep(1);
        $supervisor_pid = start_supervisor();
    }
}
