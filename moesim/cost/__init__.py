"""Cost model: the only place where work (FLOP, bytes) becomes seconds."""
from moesim.cost.profile import DeviceProfile, NetworkProfile, Profile, find_profile, load_profile, profile_search_path
from moesim.cost.model import CostModel

__all__ = ["CostModel", "DeviceProfile", "NetworkProfile", "Profile", "find_profile", "load_profile",
           "profile_search_path"]
