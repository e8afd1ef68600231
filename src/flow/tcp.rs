//! TCP connection state as a pure transition function of (state, flags, direction).

use super::key::Direction;
use crate::decode::TcpFlags;

/// Lifecycle of a TCP connection as seen by a passive observer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TcpState {
    /// First packet was not a SYN (mid-stream pickup) and nothing is known yet.
    #[default]
    None,
    SynSent,
    SynAckSeen,
    Established,
    /// One side sent FIN.
    Closing,
    /// Both sides sent FIN.
    Closed,
    Reset,
}

impl TcpState {
    /// Next state after a packet with `flags` going in `dir`. `fin_seen` records which
    /// directions already sent a FIN.
    pub fn next(self, flags: TcpFlags, dir: Direction, fin_seen: &mut [bool; 2]) -> TcpState {
        use TcpState::*;
        if flags.rst() {
            return Reset;
        }
        if flags.fin() {
            if let Some(f) = fin_seen.get_mut(dir.index()) {
                *f = true;
            }
            return if fin_seen[0] && fin_seen[1] {
                Closed
            } else {
                Closing
            };
        }
        match (self, dir) {
            (None, Direction::Forward) if flags.syn() && !flags.ack() => SynSent,
            (None, _) if flags.syn() && flags.ack() => SynAckSeen,
            (None, _) if flags.ack() => Established,
            (SynSent, Direction::Reverse) if flags.syn() && flags.ack() => SynAckSeen,
            (SynAckSeen, Direction::Forward) if flags.ack() && !flags.syn() => Established,
            (s, _) => s,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TcpState::None => "none",
            TcpState::SynSent => "syn_sent",
            TcpState::SynAckSeen => "syn_recv",
            TcpState::Established => "established",
            TcpState::Closing => "fin_wait",
            TcpState::Closed => "closed",
            TcpState::Reset => "reset",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::*;

    fn f(b: u8) -> TcpFlags {
        TcpFlags(b)
    }

    #[test]
    fn handshake_and_close() {
        let mut fins = [false; 2];
        let s = TcpState::None.next(f(TcpFlags::SYN), Forward, &mut fins);
        assert_eq!(s, TcpState::SynSent);
        let s = s.next(f(TcpFlags::SYN | TcpFlags::ACK), Reverse, &mut fins);
        assert_eq!(s, TcpState::SynAckSeen);
        let s = s.next(f(TcpFlags::ACK), Forward, &mut fins);
        assert_eq!(s, TcpState::Established);
        let s = s.next(f(TcpFlags::FIN | TcpFlags::ACK), Forward, &mut fins);
        assert_eq!(s, TcpState::Closing);
        let s = s.next(f(TcpFlags::FIN | TcpFlags::ACK), Reverse, &mut fins);
        assert_eq!(s, TcpState::Closed);
    }

    #[test]
    fn refused() {
        let mut fins = [false; 2];
        let s = TcpState::None.next(f(TcpFlags::SYN), Forward, &mut fins);
        let s = s.next(f(TcpFlags::RST | TcpFlags::ACK), Reverse, &mut fins);
        assert_eq!(s, TcpState::Reset);
    }
}
