"""Labels of the GitHub sources' files: corpus classes (encoder.data.labels) per file key.

The clip-set tables in encoder/clipset.py name the classes of the files they cover in words
("knocking on a door"); `CLIPSET_LABELS` maps those words to corpus classes, so one table decides
both the clip set and the training labels of a file. The tables below cover the rest: every other
file of mod-sounds and moodist, the CDDA-Soundpacks folders, the drone recordings and Speech
Commands' background noise beside ESC-50 in saraalemadi/DroneAudioDataset.

A key is a file's path inside its pack without the extension and take number
("plmove/walk_t_concrete"); `lookup` walks up from the whole key to shorter prefixes at "/", "_"
and "-" ("plmove/walk_t_concrete" -> "plmove/walk_t" -> ... -> "plmove"), so a folder's entry
covers its files unless a longer key says otherwise. A value is a tuple of classes (the first is
the main one, the rest also sound over the whole file); () marks a file as unlabelled on purpose:
it is still a training recording, and the teacher labels it. Keys no entry covers are unlabelled.
"""

from __future__ import annotations

import re

Labels = tuple[str, ...]

CLIPSET_LABELS: dict[str, str] = {  # encoder.clipset's class words -> corpus class
    "acoustic guitar": "acoustic_guitar", "airplane": "jet_plane", "balloon popping": "balloon_pop",
    "bass drum": "bass_drum", "bees": "bees", "bicycle bell": "bicycle_bell", "bird": "bird",
    "blender": "blender", "boiling water": "boiling_water", "car engine": "car_engine", "car horn": "car_horn",
    "cat": "cat", "cat purring": "cat_purring", "ceiling fan": "ceiling_fan", "cello": "cello",
    "chicken": "chicken", "chopping food": "chopping_food", "church bells": "church_bell", "cicada": "cicada",
    "clarinet": "clarinet", "clock ticking": "clock_tick", "cow": "cow", "crickets": "crickets", "crow": "crow",
    "crowd": "crowd", "cupboard door": "cupboard", "cutlery": "cutlery", "dishwasher": "dishwasher",
    "dog": "dog", "donkey": "donkey", "door creaking": "door_creak", "doorbell": "doorbell",
    "double bass": "double_bass", "drawer opening and closing": "drawer", "duck": "duck", "eating": "eating",
    "elephant": "elephant", "explosion": "explosion", "fire crackling": "fire", "fireworks": "fireworks",
    "flute": "flute", "frog": "frog", "frying food in a pan": "frying", "gas stove burner": "stove_burner",
    "goat": "goat", "gunshot": "gunshot", "helicopter": "helicopter", "hi-hat": "hi_hat", "horse": "horse",
    "horse galloping": "horse_gallop", "juicer": "juicer", "keyboard typing": "typing",
    "kitchen extractor fan": "extractor_fan", "knocking on a door": "door_knock", "lion": "lion",
    "microwave oven": "microwave", "monkey": "monkey", "motorcycle": "motorcycle", "owl": "owl",
    "peeling vegetables": "peeling", "piano": "piano", "pig": "pig", "plates clattering": "plates",
    "rain": "rain", "rattlesnake": "rattlesnake", "refrigerator": "refrigerator", "rooster": "rooster",
    "running water": "water_tap", "saxophone": "saxophone", "sea waves": "sea_waves", "seagull": "seagull",
    "sheep": "sheep", "siren": "siren", "snare drum": "snare_drum", "stream": "stream",
    "sweeping the floor": "sweeping", "thunder": "thunder", "traffic": "traffic", "train": "train",
    "train whistle": "train_horn", "turkey": "turkey", "turning book pages": "page_turning",
    "typewriter": "typewriter", "violin": "violin", "washing dishes": "washing_dishes",
    "washing machine": "washing_machine", "waterfall": "waterfall", "whale": "whale", "whistling": "whistling",
    "wind": "wind", "wind chimes": "wind_chimes", "wolf": "wolf", "woodpecker": "woodpecker", "zipper": "zipper",
}

# AntumMT/mod-sounds: file stems after "sounds_" the clip-set table (clipset.MOD_SOUNDS) leaves out
MOD_SOUNDS: dict[str, Labels] = {
    "apple_bite": ("eating",), "ar_burst": ("machine_gun",), "ar_fire": ("gunshot",), "bear": ("bear",),
    "bird": ("bird",), "camel": ("camel",), "canary": ("bird",), "chalk": ("chalk",), "cobra": ("snake_hiss",),
    "coin": ("coins",), "compressor_motor": ("machinery",), "coyote_howl": ("wolf",), "dolphin": ("dolphin",),
    "door_close": ("door_slam",), "door_open": ("door_opening",), "entity_hit": ("punch",),
    "explosion": ("explosion",), "explosion_scifi": (), "fireworks": ("fireworks",), "gallop": ("horse_gallop",),
    "goose": ("goose",), "gorilla": ("gorilla",), "grasshopper": ("crickets",), "horse_snort": ("horse",),
    "hyena": ("hyena",), "jaguar_saw": ("big_cat",), "jet": ("jet_plane",), "laser": ("laser",),
    "laugh_evil": ("laughter",), "leaves": ("rustling_leaves",), "leopard": ("big_cat",), "loon": ("bird",),
    "match_ignite": ("match_strike",), "melee_hit": ("punch",), "node_dig_choppy": ("wood_chopping",),
    "node_dig_crumbly": ("digging",), "node_dig_gravel": ("digging",), "node_dug_glass": ("glass_breaking",),
    "node_step": ("footsteps",), "node_step_water": ("footsteps", "splash"), "parrot": ("parrot",),
    "peacock": ("bird",), "pencil": ("pencil_writing",), "pigeon": ("bird",), "pistol_cock": ("gun_cocking",),
    "pistol_fire_dry": (), "pistol_reload": ("gun_cocking",), "plasma_shot": ("laser",), "quail": ("bird",),
    "rifle_cock": ("gun_cocking",), "rifle_fire_cock": ("gunshot", "gun_cocking"), "rifle_fire_dry": (),
    "rifle_small_fire": ("gunshot",), "sea_lion": ("sea_lion",), "shears": ("scissors",),
    "shotgun_fire_pump": ("gunshot", "gun_cocking"), "shotgun_pump": ("gun_cocking",), "tiger": ("big_cat",),
    "toucan": ("bird",), "toy_squeak": ("squeaky_toy",), "trumpeter_swan": ("bird",), "undead_moan": ("groan",),
    "vomit": ("vomiting",), "wolf_snarl": ("wolf",), "woosh": ("whoosh",), "zombie": ("groan",),
    # imitations, synthetic or unclear: kept for the teacher
    "balloon_inflate": (), "bat": (), "bicycle_horn": (), "bicycle_spokes": (), "boing": (), "fireball": (),
    "fuse": (), "ghost": (), "giraffe_hum": (), "lava_cool": (), "mermaid_song": (), "mouse": (), "node": (),
    "penguin": (), "raccoon": (), "ricochet": (), "robot": (), "scrape": (), "skeleton_bones": (),
    "squirrel": (), "tool_break": (), "tree_creak": (), "vulture": (), "yak": (), "zebra": (),
}

# remvze/moodist: paths under public/sounds the clip-set table (clipset.MOODIST) leaves out
MOODIST: dict[str, Labels] = {
    "alarm": ("alarm",), "nature/droplets": ("water_drops",), "nature/howling-wind": ("wind",),
    "nature/walk-in-snow": ("footsteps",), "nature/walk-on-gravel": ("footsteps",),
    "nature/walk-on-leaves": ("footsteps", "rustling_leaves"), "nature/wind-in-trees": ("wind", "rustling_leaves"),
    "nature/jungle": (), "places/cafe": ("chatter",), "places/crowded-bar": ("chatter",),
    "places/restaurant": ("chatter",), "places/construction-site": ("construction",),
    "places/laundry-room": ("washing_machine",), "places": (), "rain": ("rain",), "things/bubbles": ("bubbles",),
    "things/morse-code": ("beep",), "things/paper": ("paper_rustling",), "things/singing-bowl": ("singing_bowl",),
    "things/tuning-radio": ("radio",), "things/windshield-wipers": ("windshield_wipers",), "things": (),
    "transport/inside-a-train": ("train",), "transport": (), "urban/busy-street": ("traffic",),
    "urban/highway": ("traffic",), "urban/road": ("traffic",),
}
MOODIST_SYNTHETIC = ("noise/", "binaural/", "silence")  # generated noise, beats and silence: not recordings

# Fris0uman/CDDA-Soundpacks: paths under sound/CC-Sounds
CDDA: dict[str, Labels] = {
    "close_door": ("door_slam",), "open_door": ("door_opening",), "close_door/window": (), "open_door/window": (),
    "deal_damage": ("groan",), "engine_start": ("car_engine",), "engine_start/electric": (),
    "engine_stop": ("car_engine",), "engine_working_external": ("car_engine",),
    "engine_working_internal": ("car_engine",),
    "environment/ambient/alarm": ("alarm",), "environment/ambient/church_bells": ("church_bell",),
    "environment/ambient/police_siren": ("siren",), "environment/ambient": (),
    "environment/weather/WEATHER_RAINSTORM": ("rain",), "environment/weather/WEATHER_SNOWSTORM": ("wind",),
    "environment/weather/drizzle": ("rain",), "environment/weather/heavyrain": ("rain",),
    "environment/weather/indoors_rain": ("rain",), "environment/weather/thunder_far": ("thunder",),
    "environment/weather/thunder_near": ("thunder",), "environment/weather/thunderstorm": ("rain", "thunder"),
    "environment/weather/night/night_rain": ("rain",), "environment/weather": (),
    "explosion": ("explosion",), "fire": ("fire",),
    "fire_gun/bows": ("arrow",), "fire_gun/generic": ("gunshot",), "fire_gun/handguns": ("gunshot",),
    "fire_gun/rifles": ("gunshot",), "fire_gun/shotguns": ("gunshot",), "fire_gun/machineguns": ("machine_gun",),
    "fire_gun/laserguns": ("laser",), "fire_gun": (),
    "humming/electric": ("electric_hum",), "humming/machinery": ("machinery",),
    "melee_hit_flesh/small_bash": ("punch",), "melee_hit_flesh/big_bash": ("punch",),
    "melee_hit_flesh/default": ("punch",), "melee_swing": ("whoosh",), "mon_death/zombie_death": ("groan",),
    "plmove": ("footsteps",), "plmove/walk_water": ("footsteps", "splash"),
    "plmove/walk_t_water_sh": ("footsteps", "splash"), "plmove/clear_obstacle": (), "plmove/fatigue": ("breathing",),
    "radio": ("radio",), "reload": ("gun_cocking",), "smash/smash_glass": ("glass_breaking",),
    "smash_fail": ("banging",), "smash_success": ("banging",), "smash_success/glass": ("glass_breaking",),
    "smash_success/window": ("glass_breaking",), "smash_success/window/wood_smash_success": ("wood_breaking",),
    "smash_success/window/window_boarded_smash_success": ("glass_breaking", "wood_breaking"),
    "smash_success/ceramic": ("ceramic_breaking",), "smash_success/wood_furn": ("wood_breaking",),
    "smash_success/door_wood": ("wood_breaking",),
    "speech/ferals/creepy_laugh": ("laughter",), "speech/ferals/die_scream": ("scream",),
    "speech/ferals/female_scream": ("scream",), "speech/ferals/male_scream": ("scream",),
    "speech/ferals/female_anguish_heavy_breathing": ("breathing",),
    "speech/ferals/male_heavy_breathing": ("breathing",), "speech/ferals/male_scared_heavy_breathing": ("breathing",),
    "speech/ferals/female_mad_whisper": ("whispering",), "speech/ferals/old_man_hesitant_ranbling": ("male_speech",),
    "speech/zombie": ("groan",), "tool/axe": ("wood_chopping",), "tool/camera_shutter": ("camera_shutter",),
    "tool/geiger": ("geiger_counter",), "tool/hacksaw": ("sawing",), "tool/pickaxe": ("digging",),
    "tool/shovel": ("digging",), "vehicle/car_alarm": ("car_alarm",), "vehicle/horn_medium": ("car_horn",),
    "vehicle/rear_beeper": ("beep",), "vehicle_close": ("car_door",), "vehicle_open": ("car_door",),
}

# saraalemadi/DroneAudioDataset, Binary_Drone_Audio: drone recordings, and the Speech Commands
# background noise among the ESC-50 chunks of unknown/ (recording name without its chunk number)
DRONE: Labels = ("drone",)
SPEECH_COMMANDS: dict[str, Labels] = {
    "doing_the_dishes": ("washing_dishes",), "running_tap": ("water_tap",), "exercise_bike": (),
    "dude_miaowing": (),
}
SPEECH_COMMANDS_SYNTHETIC = ("white_noise", "pink_noise", "silence")

_BOUNDARY = re.compile(r"[/_-]")


def lookup(table: dict[str, Labels], key: str) -> Labels:
    """Classes of the longest prefix of key (at a "/", "_" or "-") that the table has; () if none."""
    cuts = [m.start() for m in _BOUNDARY.finditer(key)]
    for end in [len(key), *reversed(cuts)]:
        if key[:end] in table:
            return table[key[:end]]
    return ()


def all_tables() -> tuple[dict, ...]:
    """Every table, for the corpus key: editing a label must rebuild the corpus."""
    return (CLIPSET_LABELS, MOD_SOUNDS, MOODIST, MOODIST_SYNTHETIC, CDDA, DRONE, SPEECH_COMMANDS,
            SPEECH_COMMANDS_SYNTHETIC)
